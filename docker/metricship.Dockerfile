# syntax=docker/dockerfile:1.7
# metricship: turns Airflow StatsD into CloudWatch metrics and the worker-scaling signal.
# Build from the repository root:  docker build -f docker/metricship.Dockerfile -t metricship .
#
# The build stage makes exactly the binary scripts/build-static makes (glibc static-pie,
# x86_64-unknown-linux-gnu, -C target-feature=+crt-static, --locked) by running that
# script. The final image is FROM scratch: the binary, a CA bundle (rustls reads
# /etc/ssl/certs) and a numeric non-root user. No shell, no libc, no package manager;
# the ECS health check runs "metricship healthcheck". /etc/hosts and /etc/resolv.conf come from
# the container runtime, and the binary resolves names itself (hickory).

FROM --platform=linux/amd64 rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY scripts/build-static scripts/build-static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    DAEMONS=metricship scripts/build-static

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/dist/metricship /usr/local/bin/metricship
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/metricship"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/usr/local/bin/metricship", "healthcheck"]
