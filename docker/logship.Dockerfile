# syntax=docker/dockerfile:1.7
# logship: ships Airflow task logs to Firehose and S3.
# Build from the repository root:  docker build -f docker/logship.Dockerfile -t logship .
#
# The build stage makes exactly the binary scripts/build-static makes (glibc static-pie,
# x86_64-unknown-linux-gnu, -C target-feature=+crt-static, --locked) by running that
# script. The final image is FROM scratch: the binary, a CA bundle (rustls reads
# /etc/ssl/certs) and a numeric non-root user. No shell, no libc, no package manager;
# the ECS health check runs "logship healthcheck". /etc/hosts and /etc/resolv.conf come from
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
    DAEMONS=logship scripts/build-static
# logship keeps its checkpoints on a task-scoped volume at /var/lib/logship. Fargate
# creates bind-mount volumes root-owned (0755) unless the image declares the path as a
# VOLUME, in which case it copies the directory (and its ownership) from the image. The
# same goes for the Airflow log folder that logship reads and Airflow (uid 50000, gid 0)
# writes: declaring it here, group-writable for gid 0, lets Airflow write into the shared
# volume.
RUN mkdir -p /rootfs/state/logship /rootfs/airflow/logs

FROM scratch AS dist
COPY dist/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY dist/logship /src/dist/logship
COPY dist/rootfs/ /rootfs/

# checkov:skip=CKV_DOCKER_7:This FROM names a stage of this file (build or dist), not an image; the one image pulled, rust, is pinned to a version and checked by tests/infra/test_infra_images.py.
FROM ${BINARY_FROM} AS artefacts

FROM scratch
COPY --from=artefacts /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=artefacts /src/dist/logship /usr/local/bin/logship
ARG AIRFLOW_UID=50000
COPY --from=artefacts --chown=65532:65532 --chmod=0700 /rootfs/state/ /var/lib/
COPY --from=artefacts --chown=${AIRFLOW_UID}:0 --chmod=0775 /rootfs/airflow/ /opt/airflow/
VOLUME ["/var/lib/logship", "/opt/airflow/logs"]
ENV LOGSHIP_STATE_DIR=/var/lib/logship
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/logship"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/usr/local/bin/logship", "healthcheck"]
