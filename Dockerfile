# The operator's image: a static (musl) binary on scratch, run as 65532.
# Without a container engine, scripts/build-image.sh builds the same image
# with buildah (`make image`).
FROM docker.io/library/rust:1.89-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin peregrine --target x86_64-unknown-linux-musl \
 && strip target/x86_64-unknown-linux-musl/release/peregrine \
 && mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp \
 && chmod 1777 /rootfs/tmp \
 && cp target/x86_64-unknown-linux-musl/release/peregrine /rootfs/peregrine \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && echo "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin" >/rootfs/etc/passwd \
 && echo "nonroot:x:65532:" >/rootfs/etc/group

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 2801 8081
ENV PEREGRINE_LOG_FORMAT=json
# No transparent huge pages for the allocator: on hosts with THP `always` they
# would round its small heaps up to 2 MiB pages.
ENV MIMALLOC_ALLOW_THP=0
ENTRYPOINT ["/peregrine"]
CMD ["run"]
