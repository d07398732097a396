# ztee: the two commands that matter on a fresh machine are `make demo` and `make test`.
#
#   make demo    installs what is needed, builds ztee and its guest, runs a command in a microVM
#   make test    installs what is needed, builds the guest, runs every test
#
# Expensive artifacts are cached by their inputs under $(CACHE): the guest kernel and root file
# system (see guest/), and cargo's target directory.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CACHE ?= $(or $(ZTEE_CACHE_DIR),$(HOME)/.cache/ztee)
export ZTEE_CACHE_DIR := $(CACHE)
export CARGO_TARGET_DIR ?= $(CACHE)/cargo-target
# A fresh machine builds once: incremental state would only fill the disk (tens of GB for the
# test binaries). Set CARGO_INCREMENTAL=1 when iterating on one crate.
export CARGO_INCREMENTAL ?= 0
export ZTEE_GUEST_DIR ?= $(or $(ZTEE_DATA_DIR),$(HOME)/.local/share/ztee)/guest
ZTEE := $(CARGO_TARGET_DIR)/release/ztee

.PHONY: deps guest build demo test lint

deps:
	scripts/install-deps.sh

guest: deps
	scripts/guest.sh

build: deps
	cargo build --release --locked -p ztee
	@echo "ztee: $(ZTEE)"

demo: guest build
	$(ZTEE) doctor
	$(ZTEE) run -- python3 -c 'import platform; print("hello from", platform.node(), "kernel", platform.release(), "6*7 =", 6*7)'

test: guest
	scripts/test.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
