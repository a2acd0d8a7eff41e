# syntax=docker/dockerfile:1

# cerby-exporter image: a wheel built in one stage, installed into a clean slim Python in the next.
#   docker build -t cerby-exporter .
#   docker run --rm --read-only --tmpfs /tmp -p 10366:10366 cerby-exporter --demo
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets through only what the wheel is built from.
COPY . .
RUN python -m pip wheel --no-deps --wheel-dir /dist .

# The same base as the build stage, so the wheel is built for the Python that runs it.
FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="cerby-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Cerby automation jobs: status, retryability and workflow type as metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cerby-exporter/cerby-exporter" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CERBY_STATE_PATH=/var/lib/cerby-exporter/state.sqlite
# The wheel's dependencies come from PyPI within the ranges pyproject.toml allows; the build stage
# and its tools stay behind. The wheel itself is removed once installed. The state directory is
# the one place the exporter writes (its SQLite state file and journal), so it belongs to the
# exporter's user.
COPY --from=build /dist/ /tmp/dist/
RUN python -m pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && install -d -m 0750 -o 65532 -g 65532 /var/lib/cerby-exporter
# A numeric user and group with no home and no shell, which can write nowhere but the state
# volume: the image runs unchanged with a read-only root filesystem (no bytecode is written).
# The VOLUME keeps the state out of the container's layer, and writable under --read-only.
USER 65532:65532
VOLUME ["/var/lib/cerby-exporter"]
WORKDIR /
EXPOSE 10366
ENTRYPOINT ["cerby-exporter"]
