# ephemera — build, test and package. `make setup test` on a fresh machine.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ephemera-target
LAMBDA_TARGET_DIR ?= $(HOME)/.cache/ephemera-lambda-target
VENV := .venv
MOTO_VERSION := 5.2.5
CARGO_LAMBDA_VERSION := 1.9.2

.PHONY: setup build test unit lint fmt lambdas bench clean

# Python tools in a local venv: moto (the AWS emulator the tests start) and cargo-lambda.
$(VENV)/bin/moto_server:
	python3 -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q 'moto[server]==$(MOTO_VERSION)'

$(VENV)/bin/cargo-lambda: $(VENV)/bin/moto_server
	$(VENV)/bin/pip install -q 'cargo-lambda==$(CARGO_LAMBDA_VERSION)'

setup: $(VENV)/bin/moto_server
	cargo fetch --locked

build:
	cargo build --workspace --locked

# Unit tests of the pure core and handlers, then the handlers against moto behind the front door.
test: $(VENV)/bin/moto_server
	cargo test --workspace --locked

unit:
	cargo test --workspace --locked --lib

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

# The five Lambda bootstraps for arm64 (provided.al2023), and their sizes.
lambdas: $(VENV)/bin/cargo-lambda
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) \
	  cargo lambda build --release --arm64 -p ephemera-functions
	@echo "bootstrap sizes (bytes):"
	@for f in $(LAMBDA_TARGET_DIR)/lambda/*/bootstrap; do \
	  printf '  %-28s %10d\n' "$$(basename $$(dirname $$f))" "$$(stat -c %s $$f)"; done

bench: lambdas

clean:
	cargo clean
