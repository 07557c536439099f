# syntax=docker/dockerfile:1.7
# workerguard: protects the Airflow worker task from scale-in while Airflow tasks run in it.
# Build from the repository root:  docker build -f docker/workerguard.Dockerfile -t workerguard .
#
# The build stage makes exactly the binary scripts/build-static makes (glibc static-pie,
# x86_64-unknown-linux-gnu, -C target-feature=+crt-static, --locked) by running that
# script. The final image is FROM scratch: the binary and a numeric non-root user, nothing
# else. workerguard talks only to the ECS agent (plain HTTP to the address ECS_AGENT_URI
# gives), so it needs no CA bundle and resolves no name. No shell, no libc, no package
# manager; the ECS health check runs "workerguard healthcheck".

# Where the final image's binary comes from: `build` (the default) compiles it in the Rust
# image; `dist` takes the binary that scripts/build-static left in dist/, for machines
# that cannot pull the Rust image (the image tests build it that way with podman). One
# final stage either way.
ARG BINARY_FROM=build

FROM --platform=linux/amd64 rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY scripts/build-static scripts/build-static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    DAEMONS=workerguard scripts/build-static

FROM scratch AS dist
COPY dist/workerguard /src/dist/workerguard

# checkov:skip=CKV_DOCKER_7:This FROM names a stage of this file (build or dist), not an image; the one image pulled, rust, is pinned to a version and checked by tests/infra/test_infra_images.py.
FROM ${BINARY_FROM} AS artefacts

FROM scratch
COPY --from=artefacts /src/dist/workerguard /usr/local/bin/workerguard
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/workerguard"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/usr/local/bin/workerguard", "healthcheck"]
