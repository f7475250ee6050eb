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
	cp crds/*.yaml charts/peregrine/crds/

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

# ---------------------------------------------------------------------------
# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
# used by the integration tests; see tests/controlplane/ and testenv/.
#
#   make controlplane-build   build the pinned binaries (cached, see build.sh)
#   make controlplane         start it in the background; prints the kubeconfig path last
#   make controlplane-down    stop it
# ---------------------------------------------------------------------------
CONTROLPLANE_DIR     := target/controlplane
CONTROLPLANE_PID     := $(CONTROLPLANE_DIR)/testenv.pid
CONTROLPLANE_LOG     := $(CONTROLPLANE_DIR)/testenv.log
CONTROLPLANE_TIMEOUT ?= 120
CARGO_TARGET_DIR     ?= target
TESTENV_BIN          := $(CARGO_TARGET_DIR)/debug/testenv



controlplane-build:
	@tests/controlplane/build.sh

# Rebuilt only when its sources change, so a warm `make controlplane` does not
# wait for the cargo lock.
$(TESTENV_BIN): $(wildcard testenv/src/*.rs) testenv/Cargo.toml
	@$(CARGO) build --quiet -p peregrine-testenv --bin testenv
	@touch $@

controlplane: controlplane-build $(TESTENV_BIN)
	@mkdir -p $(CONTROLPLANE_DIR)
	@if [[ -f $(CONTROLPLANE_PID) ]] && kill -0 "$$(cat $(CONTROLPLANE_PID))" 2>/dev/null \
	    && [[ -f $(CONTROLPLANE_DIR)/kubeconfig ]]; then \
	  echo "control plane already running (pid $$(cat $(CONTROLPLANE_PID)))"; \
	else \
	  rm -f $(CONTROLPLANE_PID) $(CONTROLPLANE_DIR)/kubeconfig; \
	  setsid $(TESTENV_BIN) up --dir $(CONTROLPLANE_DIR) --timeout $(CONTROLPLANE_TIMEOUT) \
	    </dev/null >$(CONTROLPLANE_LOG) 2>&1 & \
	  echo $$! >$(CONTROLPLANE_PID); \
	  pid=$$(cat $(CONTROLPLANE_PID)); \
	  echo "starting the control plane (pid $$pid, log $(CONTROLPLANE_LOG))"; \
	  deadline=$$((SECONDS + 3 * $(CONTROLPLANE_TIMEOUT))); \
	  until [[ -f $(CONTROLPLANE_DIR)/kubeconfig ]]; do \
	    if ! kill -0 $$pid 2>/dev/null; then \
	      echo "the control plane exited during start-up:" >&2; tail -n 40 $(CONTROLPLANE_LOG) >&2; \
	      rm -f $(CONTROLPLANE_PID); exit 1; \
	    fi; \
	    if (( SECONDS > deadline )); then \
	      echo "the control plane is not ready; stopping it. Its log:" >&2; tail -n 40 $(CONTROLPLANE_LOG) >&2; \
	      kill $$pid; rm -f $(CONTROLPLANE_PID); exit 1; \
	    fi; \
	    sleep 0.1; \
	  done; \
	  head -n 1 $(CONTROLPLANE_LOG); \
	fi
	@echo $(CONTROLPLANE_DIR)/kubeconfig

controlplane-down:
	@if [[ -f $(CONTROLPLANE_PID) ]]; then \
	  pid=$$(cat $(CONTROLPLANE_PID)); \
	  if kill -TERM $$pid 2>/dev/null; then \
	    for _ in $$(seq 300); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	    if kill -0 $$pid 2>/dev/null; then echo "still running after 30 s: SIGKILL" >&2; kill -KILL $$pid; fi; \
	    echo "control plane stopped (pid $$pid)"; \
	  else \
	    echo "control plane was not running"; \
	  fi; \
	  rm -f $(CONTROLPLANE_PID) $(CONTROLPLANE_DIR)/kubeconfig; \
	else \
	  echo "control plane is not running (no $(CONTROLPLANE_PID))"; \
	fi

# ---------------------------------------------------------------------------
# Shipping: the Helm chart, plain manifests and the image.
#
#   make chart-test    lint, render, install and uninstall the chart on the control plane
#   make deploy        regenerate deploy/peregrine.yaml from the chart (a test fails when it drifts)
#   make image         build target/image/peregrine.tar (OCI) without a daemon, with buildah
#   make image-tools   install buildah, skopeo, umoci and musl-tools (Debian, as root)
# ---------------------------------------------------------------------------
.PHONY: chart-test deploy image image-tools

chart-test: controlplane-build
	$(CARGO) test --test chart --test image

deploy: controlplane-build
	./scripts/render-deploy.sh

image: image-tools
	./scripts/build-image.sh

image-tools:
	@./scripts/install-image-tools.sh

# ---------------------------------------------------------------------------
# Benchmark: the operator (release build) on the local control plane under
# many simulated Falco nodes; prints a table, then one JSON line, and keeps
# each run's JSON under target/bench/. See "Benchmark" in the README.
#
#   make bench                                 steady, noisy, storm and max, a few minutes
#   make bench BENCH_ARGS=--long               a minute per profile
#   make bench BENCH_ARGS='--profiles noisy --seconds 3'
# ---------------------------------------------------------------------------
.PHONY: bench
BENCH_ARGS ?=

bench: controlplane-build
	./scripts/bench.sh $(BENCH_ARGS)

# ---------------------------------------------------------------------------
# The long run of the hostile-input properties and the long faults. `make test`
# runs the same properties with a few hundred cases each and a 20 s outage.
#
#   make fuzz                         1,000,000 cases per property, 60 s outage
#   make fuzz FUZZ_CASES=100000       fewer
# ---------------------------------------------------------------------------
.PHONY: fuzz
FUZZ_CASES ?= 1000000

fuzz: controlplane-build
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --test hostile_properties -- --nocapture
	PEREGRINE_OUTAGE_SECS=60 $(CARGO) test --test reliability_apiserver -- --nocapture
