# lrpm-host: developer and CI entry points.
#   make deps   install the Debian packages the build and the tests need (idempotent)
#   make build  release build
#   make run    run the example farm (examples/farm.php)
#   make test   formatting, clippy, then the whole test suite

SHELL := /bin/bash

DEB_PACKAGES := libphp8.2-embed php8.2-dev php8.2-cli php8.2-opcache \
	libclang-dev clang pkg-config procps

# sudo only when not already root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Build exactly the locked dependency versions when a lock file exists.
LOCKED := $(if $(wildcard Cargo.lock),--locked,)

.PHONY: deps build run test

deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		status=$$(dpkg-query -W -f='$${db:Status-Status}' "$$pkg" 2>/dev/null || true); \
		[ "$$status" = installed ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

build:
	cargo build --release $(LOCKED)

run: deps build
	target/release/lrpm-host examples/farm.php

test: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test
