# syntax=docker/dockerfile:1.7
# dagsync: keeps /opt/airflow/dags in step with an S3 prefix.
# Build from the repository root:  docker build -f docker/dagsync.Dockerfile -t dagsync .
#
# The build stage makes exactly the binary scripts/build-static makes (glibc static-pie,
# x86_64-unknown-linux-gnu, -C target-feature=+crt-static, --locked) by running that
# script. The final image is FROM scratch: the binary, a CA bundle (rustls reads
# /etc/ssl/certs) and a numeric non-root user. No shell, no libc, no package manager;
# the ECS health check runs "dagsync healthcheck". /etc/hosts and /etc/resolv.conf come from
# the container runtime, and the binary resolves names itself (hickory).

# Where the final image's files come from: `build` (the default) compiles them in the Rust
# image; `dist` takes the binary that scripts/build-static left in dist/ and a CA bundle
# from the build context, for machines that cannot pull the Rust image (the image tests
# build it that way with podman). One final stage either way.
ARG BINARY_FROM=build

FROM --platform=linux/amd64 rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY scripts/build-static scripts/build-static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    DAEMONS=dagsync scripts/build-static

FROM scratch AS dist
COPY dist/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY dist/dagsync /src/dist/dagsync

# checkov:skip=CKV_DOCKER_7:This FROM names a stage of this file (build or dist), not an image; the one image pulled, rust, is pinned to a version and checked by tests/infra/test_infra_images.py.
FROM ${BINARY_FROM} AS artefacts

FROM scratch
COPY --from=artefacts /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=artefacts /src/dist/dagsync /usr/local/bin/dagsync
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dagsync"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/usr/local/bin/dagsync", "healthcheck"]
