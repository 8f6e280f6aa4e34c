# The sidecar's container image: `sidecar run` with the config at /etc/sidecar/sidecar.yaml (the Helm chart
# mounts it there). Runtime dependencies only; runs as uid 10001 and works on a read-only root filesystem once
# the data directory (node.data_dir, by default under /var/lib/sidecar) is a writable volume.
#   docker build -t sidecar:0.1.0 .            (`make image` does the same with podman)
#   docker run --rm --read-only --tmpfs /var/lib/sidecar -v $PWD/config:/etc/sidecar:ro sidecar:0.1.0
# BUILD_IMAGE and BASE_IMAGE pick the two stages' Python images. They must hold the same Python at the same path:
# the build stage's virtual environment is copied as it is. `make image-base` makes such a pair from Debian
# packages, for machines that cannot pull images.
ARG BUILD_IMAGE=python:3.11
ARG BASE_IMAGE=python:3.11-slim

# ---- build: the package and its dependencies in a virtual environment, so the final image needs no compiler
# or pip. The build image has gcc: setup.py compiles the request path with mypyc (a third less CPU per request).
FROM ${BUILD_IMAGE} AS build
# pip's CA bundle, for a build behind a TLS-intercepting proxy (a file mounted into the build); unset: pip's own
ARG PIP_CERT
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sidecar ./sidecar
RUN python3 -m venv /opt/sidecar \
    && /opt/sidecar/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/sidecar/bin/python -m pip uninstall --yes --quiet pip setuptools

# ---- runtime
FROM ${BASE_IMAGE}
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/sidecar /opt/sidecar
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --home-dir /var/lib/sidecar --shell /usr/sbin/nologin sidecar \
    && mkdir -p /etc/sidecar /var/lib/sidecar \
    && chown sidecar:sidecar /var/lib/sidecar
WORKDIR /var/lib/sidecar
USER 10001:10001
# admin, app API, outbound, inbound (mTLS), DNS (UDP and TCP), gossip (UDP and TCP)
EXPOSE 9901/tcp 3500/tcp 15001/tcp 15006/tcp 8600/udp 8600/tcp 7946/udp 7946/tcp
# the admin port's liveness; $SIDECAR_ADMIN names another admin address, as for `sidecar members`
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('SIDECAR_ADMIN', 'http://127.0.0.1:9901') + '/healthz', timeout=2)"]
ENTRYPOINT ["sidecar"]
CMD ["run", "-c", "/etc/sidecar/sidecar.yaml"]
