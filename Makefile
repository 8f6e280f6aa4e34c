# The two commands of the README are `make demo` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian tools the tests talk to: real clients and real peers, never imitations.
APT_PACKAGES := bind9-dnsutils knot-dnsutils curl openssl iproute2 nftables prometheus chromium slowhttptest nghttp2-client
# The real peers the benchmarks compare against.
BENCH_APT_PACKAGES := dnsperf dnsmasq-base wrk haproxy nginx-light
# Building and running the container image without a Docker engine: podman as root, debootstrap for local bases.
IMAGE_APT_PACKAGES := podman runc debootstrap

.PHONY: all venv native test install-test image image-base image-test image-tools unit lint demo bench tools bench-tools apt chart-test chaos clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	SIDECAR_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The request path compiled in place with mypyc (setup.py lists the modules); rebuilt when one of them changes.
NATIVE_STAMP   := $(VENV)/.native
NATIVE_SOURCES := setup.py $(shell grep -o '"sidecar/[a-z0-9_/]*\.py"' setup.py | tr -d '"')
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	@# a failed compile stops here: falling back to Python in place would leave the old library loaded
	SIDECAR_REQUIRE_NATIVE=1 $(BIN)/python setup.py --quiet build_ext --inplace
	@# the library's time is the build's (sidecar/native.py): an unchanged library is not rewritten
	@for f in sidecar/_native__mypyc*.so; do if [ -e "$$f" ]; then touch "$$f"; fi; done
	touch $(NATIVE_STAMP)

native: $(NATIVE_STAMP)

# sslyze grades the inbound listener's TLS; it pins an older cryptography, so it lives in its own venv
TOOLS_STAMP := $(VENV)/tools/.installed
$(TOOLS_STAMP):
	$(PYTHON) -m venv $(VENV)/tools
	$(VENV)/tools/bin/pip install --quiet 'sslyze>=6.0'
	touch $(TOOLS_STAMP)

venv: $(STAMP) $(NATIVE_STAMP) $(TOOLS_STAMP)

# Installs the Debian packages the tests use, when missing and when we may (root, or sudo without a password).
tools:
	@$(MAKE) --no-print-directory apt PACKAGES="$(APT_PACKAGES)"

bench-tools:
	@$(MAKE) --no-print-directory apt PACKAGES="$(BENCH_APT_PACKAGES)"

apt:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "note: cannot install$$missing (not root); tests that need them skip"; \
	  else echo "installing$$missing"; \
	    $$SUDO apt-get update -qq >/dev/null 2>&1 || true; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	      || echo "note: apt-get could not install$$missing; tests that need them skip"; \
	  fi; \
	fi

test: venv tools
	$(BIN)/python -m pytest -q --durations=15 tests --ignore=tests/install --ignore=tests/integration/image

# The product installed as a user installs it (pip install ., pip wheel ., python -m build) in fresh venvs from a
# clean copy of the tree: three builds, about five minutes of CPU, so apart from `make test`; .ci/run runs both.
install-test: venv
	$(BIN)/python -m pytest -q --durations=5 tests/install

# The container image (Dockerfile), built with podman (deploy/podman/): `make image` tags sidecar:VERSION.
# BASE_IMAGE and BUILD_IMAGE are pulled from a registry; where none can be reached, `make image-base` makes both from
# Debian packages and prints them for `make image BASE_IMAGE=... BUILD_IMAGE=...`.
VERSION     := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' sidecar/__init__.py)
IMAGE       ?= sidecar:$(VERSION)
BASE_IMAGE  ?= docker.io/library/python:3.11-slim
BUILD_IMAGE ?= docker.io/library/python:3.11
PODMAN      := deploy/podman/podman.sh
HOST_CA     := /etc/ssl/certs/ca-certificates.crt
# docker format: OCI images have no HEALTHCHECK. No intermediate images: with vfs each is a full copy, and a changed
# source tree rebuilds from the COPY on anyway. The build stage's pip trusts what the host trusts (a proxy's CA).
IMAGE_BUILD_FLAGS := --format docker --layers=false --network host \
	$(if $(wildcard $(HOST_CA)),--volume $(HOST_CA):/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt)

image-tools:
	@$(MAKE) --no-print-directory apt PACKAGES="$(IMAGE_APT_PACKAGES)"

# the image the tag named before is removed once replaced (unless a container or another tag holds it)
image: image-tools
	@before=$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE) 2>/dev/null || true); \
	$(PODMAN) build $(IMAGE_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg BUILD_IMAGE=$(BUILD_IMAGE) \
	  --tag $(IMAGE) . || exit 1; \
	if [ -n "$$before" ] && [ "$$before" != "$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE))" ]; then \
	  $(PODMAN) rmi "$$before" >/dev/null 2>&1 || true; fi

image-base: image-tools
	@deploy/podman/base.sh

# The image built on the local bases and run: uid, read-only root, /ready, HEALTHCHECK, SIGTERM, a two-container
# mesh. The first build on a machine takes minutes (debootstrap, the compiled request path), so apart from
# `make test`; .ci/run runs it. The bases stay in podman's storage: later runs skip debootstrap.
image-test: venv image-tools
	$(BIN)/python -m pytest -q tests/integration/image

unit: venv
	$(BIN)/python -m pytest -q tests/unit tests/sim

lint: venv
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/mypy sidecar

# The long chaos run: a 5-sidecar mesh under load through kills, a partition and packet loss (make test
# runs the same scenario for about a minute). CHAOS_SECONDS bounds it.
chaos: venv tools
	CHAOS_SECONDS=$${CHAOS_SECONDS:-240} $(BIN)/python -m pytest -q -s tests/integration/chaos

chart-test: venv
	$(BIN)/python -m pytest -q tests/integration/deploy

demo: venv
	$(BIN)/sidecar demo

bench: venv tools bench-tools
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find sidecar -name '*.so' -delete
