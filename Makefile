# Peregrine: the commands a developer and CI use.
# `make demo` runs the operator on a local control plane; `make test` runs everything CI runs.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test lint crds demo controlplane-build controlplane controlplane-down

all: build

build:
	$(CARGO) build --workspace

## crds: regenerate crds/ from the Rust types
crds:
	$(CARGO) run -q --bin peregrine -- crd --out-dir crds

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: everything CI runs (builds the control plane on first use)
test: controlplane-build lint
	$(CARGO) test --workspace

## demo: the main job on the embedded default
demo: controlplane-build
	./scripts/demo.sh
