# leakwatch: make demo | make test
#
# Both targets install the system packages the build needs when they are
# missing (clang and libclang-dev for RocksDB's bindings, mold as linker),
# with apt-get, through sudo when not run as root.

SHELL := /bin/bash
CARGO ?= cargo
SYSTEM_PACKAGES := clang libclang-dev mold
EXTERNAL_TESTDATA := $(abspath ../shared/testdata/external)
# A Python venv beside the build (outside the source tree): a standard
# Flight SQL client (ADBC) for the collector's client test, a feed parser
# (feedparser) for the Atom feeds' test, an OpenAPI validator (with
# jsonschema) for the public API's description, and DuckDB for the rules
# benchmark.
PYTHON ?= python3
BUILD_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
PY_VENV := $(BUILD_DIR)/py-venv
TEST_PY_PACKAGES := adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1 feedparser==6.0.14 \
  openapi-spec-validator==0.9.0 psycopg==3.3.9 psycopg-binary==3.3.9
BENCH_PY_PACKAGES := duckdb==2.0.0
# A real S3-compatible server on loopback for the scale-out test, built
# with cargo beside the build when missing.
TOOLS := $(BUILD_DIR)/tools
S3S_FS := $(TOOLS)/bin/s3s-fs
S3S_FS_VERSION := 0.14.1
# cargo-deb, for `make deb`, built with cargo beside the build when missing.
CARGO_DEB := $(TOOLS)/bin/cargo-deb
CARGO_DEB_VERSION := 3.8.0
# Cargo features of the builds here: queries on an Apache DataFusion
# Ballista cluster (docs/scale-out.md). Every cargo command below builds
# with the same ones, so that they share one build of the dependencies.
FEATURES := --features leakwatch/ballista
# Crates the agent must never pull in (it stays small).
AGENT_FORBIDDEN := ^(datafusion|arrow|parquet|rocksdb|librocksdb-sys)( |-)

# $(call apt_install,WHAT,PACKAGES): installs those of the Debian PACKAGES
# not installed yet with apt-get (through sudo when not run as root), and
# says so, naming them as WHAT.
apt_install = missing=""; \
	for p in $(2); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  echo "Installing missing $(1):$$missing (apt-get$${sudo:+ via sudo})"; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

.PHONY: demo test bench soak deps deb deb-check bench-deps browser-deps consumer-deps pg-client-deps metrics-check-deps unit-check-deps check-agent-deps fmt clippy unit py-venv test-py bench-py s3-server

# The demo's binary is built as `make test` builds it (the whole workspace
# with its tests, whose dev-dependencies turn on more features of shared
# crates): built alone, its dependencies would resolve to other features
# and RocksDB and DataFusion would compile a second time.
demo: deps
	$(CARGO) test --locked --workspace $(FEATURES) --no-run
	"$(BUILD_DIR)/debug/leakwatch" demo

test: deps browser-deps consumer-deps pg-client-deps metrics-check-deps unit-check-deps fmt clippy check-agent-deps test-py s3-server unit deb-check

bench: deps bench-deps bench-py
	$(CARGO) build --locked --profile agent -p leakwatch-agent
	AGENT=$${CARGO_TARGET_DIR:-target}/agent/leakwatch-agent ./benches/import.sh
	LEAKWATCH_EXTERNAL_TESTDATA="$(EXTERNAL_TESTDATA)" BENCH_PYTHON="$(PYTHON)" AGENT=$${CARGO_TARGET_DIR:-target}/agent/leakwatch-agent ./benches/imports.sh
	AGENT=$${CARGO_TARGET_DIR:-target}/agent/leakwatch-agent ./benches/agent.sh
	$(CARGO) bench --locked $(FEATURES) -p leakwatch --bench ingest
	BENCH_PYTHON="$(PY_VENV)/bin/python" $(CARGO) bench --locked $(FEATURES) -p leakwatch --bench rules
	$(CARGO) bench --locked $(FEATURES) -p leakwatch --bench dashboard

# The collector crash test with more rounds (SIGKILLs under 50 agents).
soak: deps
	LEAKWATCH_CRASH_ROUNDS=$${LEAKWATCH_CRASH_ROUNDS:-50} $(CARGO) test --locked $(FEATURES) -p leakwatch --test it \
	  collector_sigkilled -- --nocapture

# Tools the benchmarks compare against.
# Debian's Chromium and its WebDriver for the dashboard's browser test.
browser-deps:
	@$(call apt_install,browser test packages,chromium chromium-driver)

# The programs that load what the dashboard gives back, for the tests that
# load every blocklist and MUD file into them: dnsmasq, unbound-checkconf,
# named-checkzone (RPZ) and yanglint.
consumer-deps:
	@$(call apt_install,blocklist and MUD consumers,dnsmasq-base unbound bind9-utils libyang2-tools)

pg-client-deps:
	@$(call apt_install,PostgreSQL client for the wire protocol tests,postgresql-client)

# promtool (Debian's prometheus), which checks the collector's /metrics.
metrics-check-deps:
	@command -v promtool >/dev/null || { $(call apt_install,metrics checker,prometheus); }

# The agent as a Debian package: the binary (the `agent` profile, as
# shipped), its hardened unit, its configuration as a conffile, man pages
# and shell completions (docs/agent.md). The program that writes the
# assets is built as `make test` builds the workspace (its tests' features
# with it): `cargo run -p leakwatch-packaging` alone would resolve other
# features and compile RocksDB, DataFusion and every proc macro again.
deb: deps
	$(CARGO) build --locked --profile agent -p leakwatch-agent
	$(CARGO) build --locked --workspace --bins --tests $(FEATURES)
	"$(BUILD_DIR)/debug/leakwatch-package-assets" "$(BUILD_DIR)/agent/deb"
	@[ -x "$(CARGO_DEB)" ] || { \
	  echo "Installing cargo-deb $(CARGO_DEB_VERSION) into $(TOOLS) (cargo install)"; \
	  $(CARGO) install -q --locked --root "$(TOOLS)" cargo-deb@$(CARGO_DEB_VERSION); }
	"$(CARGO_DEB)" --no-build --profile agent -p leakwatch-agent -o "$(BUILD_DIR)/leakwatch-agent.deb"

# The package, unpacked: every file in place, the configuration a
# conffile, and systemd-analyze verify content with the unit.
deb-check: deb unit-check-deps
	@./scripts/check-deb.sh "$(BUILD_DIR)/leakwatch-agent.deb"

# systemd-analyze, which checks the agent's systemd unit.
unit-check-deps:
	@command -v systemd-analyze >/dev/null || { $(call apt_install,systemd unit checker,systemd); }

bench-deps:
	@$(call apt_install,benchmark tools,tshark tcpdump time wrk)

deps:
	@$(call apt_install,system packages,$(SYSTEM_PACKAGES))

# python3-venv is a separate Debian package; installed when missing.
py-venv:
	@if [ ! -x "$(PY_VENV)/bin/python" ]; then \
	  if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	    $(call apt_install,system package,python3-venv); \
	  fi; \
	  echo "Creating the Python venv $(PY_VENV)"; \
	  $(PYTHON) -m venv "$(PY_VENV)"; \
	fi

test-py: py-venv
	@"$(PY_VENV)/bin/python" -c 'import adbc_driver_flightsql, pyarrow, feedparser, openapi_spec_validator, psycopg' 2>/dev/null || { \
	  echo "Installing $(TEST_PY_PACKAGES) into $(PY_VENV) (pip)"; \
	  "$(PY_VENV)/bin/python" -m pip install -q --disable-pip-version-check $(TEST_PY_PACKAGES); }

bench-py: py-venv
	@"$(PY_VENV)/bin/python" -c 'import duckdb' 2>/dev/null || { \
	  echo "Installing $(BENCH_PY_PACKAGES) into $(PY_VENV) (pip)"; \
	  "$(PY_VENV)/bin/python" -m pip install -q --disable-pip-version-check $(BENCH_PY_PACKAGES); }

s3-server:
	@[ -x "$(S3S_FS)" ] || { \
	  echo "Installing s3s-fs $(S3S_FS_VERSION) (an S3-compatible test server) into $(TOOLS) (cargo install)"; \
	  $(CARGO) install -q --locked --root "$(TOOLS)" s3s-fs@$(S3S_FS_VERSION) --features binary; }

fmt:
	$(CARGO) fmt --all --check

# Also without the features: a build without Ballista must compile too.
clippy:
	$(CARGO) clippy --locked --workspace --all-targets $(FEATURES) -- -D warnings
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

check-agent-deps:
	@if $(CARGO) tree --locked -p leakwatch-agent -e normal,build --prefix none --format '{p}' | grep -E '$(AGENT_FORBIDDEN)'; then \
	  echo "error: leakwatch-agent depends on a crate it must not (above)"; exit 1; \
	else echo "leakwatch-agent: no DataFusion, Arrow, Parquet or RocksDB in its dependency tree"; fi
	@if $(CARGO) tree --locked -p leakwatch-collector -e normal,build,dev --prefix none --format '{p}' | grep -E '^leakwatch-agent '; then \
	  echo "error: the collector library depends on the agent (above); code that joins them belongs in the leakwatch crate"; exit 1; \
	else echo "leakwatch-collector: the agent is not in its dependency tree"; fi

# The tests' temporary files go in a directory of their own, deleted at the
# end: Ballista's in-process executors (the scale-out test) write shuffle
# files to temporary directories they never delete. Like /tmp, anyone may
# enter it: a test runs the agent as an unprivileged user.
unit:
	@set -o pipefail; log=$$(mktemp); tmp=$$(mktemp -d); chmod 1777 $$tmp; export TMPDIR=$$tmp; \
	if [ -d "$(EXTERNAL_TESTDATA)" ]; then \
	  LEAKWATCH_S3S_FS="$(S3S_FS)" LEAKWATCH_CHROMEDRIVER=/usr/bin/chromedriver LEAKWATCH_PROMTOOL=promtool LEAKWATCH_TEST_PYTHON="$(PY_VENV)/bin/python" LEAKWATCH_EXTERNAL_TESTDATA="$(EXTERNAL_TESTDATA)" $(CARGO) test --locked --workspace $(FEATURES) 2>&1 | tee $$log; rc=$$?; note=""; \
	else \
	  LEAKWATCH_S3S_FS="$(S3S_FS)" LEAKWATCH_CHROMEDRIVER=/usr/bin/chromedriver LEAKWATCH_PROMTOOL=promtool LEAKWATCH_TEST_PYTHON="$(PY_VENV)/bin/python" $(CARGO) test --locked --workspace $(FEATURES) -- --skip external_ 2>&1 | tee $$log; rc=$$?; \
	  note=" (tests named external_* skipped: no $(EXTERNAL_TESTDATA))"; \
	fi; \
	awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i; if ($$(i+1) ~ /^filtered/) s += $$i } } \
	  END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' $$log; \
	[ -n "$$note" ] && echo "SKIPPED$$note"; rm -rf $$log $$tmp; exit $$rc
