# market-data-sidecar image.
#
#   docker build -t market-data-sidecar:0.1.0 .
#   docker run --rm -p 8090:8090 market-data-sidecar:0.1.0
#
# The builder stage builds the wheel and installs it, with the `redis` extra,
# into a virtual environment; the runtime stage copies only that environment.
# BASE_IMAGE is any Python 3.11 image with `python -m venv` (CI builds one from
# Debian packages, since it has no registry); both stages use it, so the
# environment's interpreter path is the same in each.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
RUN python -m venv /opt/venv

COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /build/dist . \
    && /opt/venv/bin/pip install --no-cache-dir "$(find /build/dist -name 'market_data_sidecar-*.whl')[redis]"


FROM ${BASE_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_PORT=8090

# WORKDIR alone does not create the directory under buildah/podman, and a
# read-only root filesystem cannot create it at start: make it here.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
    && mkdir -p /srv/sidecar \
    && chown 10001:10001 /srv/sidecar

COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv/sidecar
USER 10001:10001

EXPOSE 8090

# Liveness only: /readyz follows the database and would mark a container
# unhealthy for an outage a restart cannot fix. No curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('SIDECAR_PORT', '8090'), timeout=4)"]

ENTRYPOINT ["market-data-sidecar"]
CMD ["run"]
