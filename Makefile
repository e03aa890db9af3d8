# lrpm-host: developer and CI entry points.
#   make deps   install the Debian packages the build and the tests need (idempotent)
#   make build  release build
#   make run    run the example farm (examples/sqlite: jobs in a SQLite file, no service)
#   make test   formatting, clippy, then the whole test suite
#   make bench  benchmarks against supervisord and a pcntl_fork parent: writes
#               bench/results/*.json, docs/benchmarks.md and its plots (~33 min)
#   make bench-quick  the same with few repetitions, to try the harness out
#   make bench-scale  only the scale measure (up to 10,000 workers, ~8 min):
#               rewrites bench/results/scale.json, then the whole report
#   make bench-output only the worker-output measure (forwarded lines per second,
#               2 and 50 chatty workers, ~3 min): bench/results/output.json, then the report
#   make bench-messenger only examples/messenger's consumers, lrpm-host against 4 php-cli
#               messenger:consume-style processes (throughput, PSS; ~2 min): bench/results/messenger.json
#   make bench-tasks  only Lrpm\Task's cost (Task::run to the task's first line and back, next to
#               pcntl_fork; ~1 min): bench/results/tasks.json, then the report
#   make bench-cluster  one farm over 3-4 members and a real etcd on loopback, 3,000 units
#               (bring-up, kill -9, drain, a joining member; ~3 min): bench/results/cluster.json
#   make php    build PHP $(PHP_VERSION) (default 8.4) from source, with APCu and phpredis, into build/php-8.4/prefix
#               (Debian's source packages, or PHP_SRC= PHP_APCU_SRC= PHP_REDIS_SRC=), then lrpm-host
#               against it into build/php-8.4/dist; PHP_STATIC=1: PHP linked into the
#               binary (build/php-8.4/dist-static). Incremental. php-src-config/README.md
#   make test-php84   make php PHP_VERSION=8.4, then the whole test suite against it
#   make docker       build the container image lrpm-host:latest (DOCKER_IMAGE=...; docs/deploy.md)
#   make docker-test  build it, then check it against the Docker engine
#               (tests/docker/check.sh: graceful docker stop, PID 1, lrpmctl); not part of `make test`
#   make docker-static       the image of the self-contained binary (make php PHP_STATIC=1,
#               Dockerfile.static): lrpm-host:static (DOCKER_STATIC_IMAGE=...)
#   make docker-static-test  build it, then the same checks, plus: no libphp and no php in it

SHELL := /bin/bash

# What the examples (examples/*) and their tests use: the real services they
# run against, started by the tests themselves on loopback, and PHP's clients.
EXAMPLE_PACKAGES := php8.2-sqlite3 php8.2-apcu composer phpunit \
	postgresql php8.2-pgsql util-linux \
	redis-server php8.2-redis php-symfony-messenger php-symfony-redis-messenger \
	php-symfony-event-dispatcher \
	gearman-job-server php8.2-gearman beanstalkd php-pda-pheanstalk php8.2-curl \
	rabbitmq-server php-amqplib
# The cluster's coordination store, started by the cluster tests on loopback,
# etcdctl to turn on its auth, and openssl for the TLS test's certificates.
CLUSTER_PACKAGES := etcd-server etcd-client openssl
DEB_PACKAGES := libphp8.2-embed php8.2-dev php8.2-cli php8.2-opcache \
	libclang-dev clang pkg-config procps \
	python3 python3-prometheus-client \
	$(EXAMPLE_PACKAGES) $(CLUSTER_PACKAGES)
# What only the benchmarks use: the contender, the workload's framework, and
# Debian's Python with matplotlib for the harness and its plots.
BENCH_PACKAGES := supervisor python3 python3-matplotlib \
	php-symfony-messenger php-symfony-console php-symfony-dependency-injection \
	php-symfony-serializer php-symfony-event-dispatcher php-symfony-config \
	php-symfony-property-access php-symfony-validator php8.2-xml

# The dashboard's browser test: Debian's chromium, its WebDriver, and the
# Selenium client that drives it.
BROWSER_PACKAGES := chromium chromium-driver python3-selenium

# sudo only when not already root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Where cargo puts the binaries (CARGO_TARGET_DIR, as cargo itself reads it).
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/release
# The example farm's files (its SQLite database, spool, control socket).
EXAMPLE_VAR := examples/sqlite/var
# Build exactly the locked dependency versions when a lock file exists.
LOCKED := $(if $(wildcard Cargo.lock),--locked,)

# The image `make docker` builds and `make docker-test` checks.
DOCKER_IMAGE ?= lrpm-host:latest
# The image of the self-contained binary (make docker-static, docker-static-test).
DOCKER_STATIC_IMAGE ?= lrpm-host:static

# PHP built from source (make php, make test-php84).
PHP_VERSION ?= 8.4
PHP_BUILD ?= $(CURDIR)/build/php-$(PHP_VERSION)
PHP_JOBS ?= 2
PHP_STATIC ?= 0
PHP_PREFIX := $(PHP_BUILD)/prefix
# Each PHP flavour has its own cargo target folder: switching between
# them (or back to Debian's PHP) never rebuilds the other.
PHP_FLAVOUR := $(if $(filter 1,$(PHP_STATIC)),-static,)
PHP_CARGO_TARGET := $(PHP_BUILD)/target$(PHP_FLAVOUR)
PHP_CARGO := PHP_CONFIG=$(PHP_PREFIX)/bin/php-config LRPM_PHP_STATIC=$(PHP_STATIC) \
	CARGO_TARGET_DIR=$(PHP_CARGO_TARGET) cargo

.PHONY: deps bench-deps install-packages build run test test-no-zygote bench bench-static bench-quick bench-scale bench-output bench-messenger bench-tasks bench-dashboard test-browser browser-deps docker docker-test php php-lib php-test test-php84 docker-static docker-static-test

deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEB_PACKAGES)"

bench-deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEB_PACKAGES) $(BENCH_PACKAGES)"

install-packages:
	@missing=""; \
	for pkg in $(PACKAGES); do \
		status=$$(dpkg-query -W -f='$${db:Status-Status}' "$$pkg" 2>/dev/null || true); \
		[ "$$status" = installed ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

build:
	cargo build --release $(LOCKED)

run: deps build
	@mkdir -p $(EXAMPLE_VAR)
	@echo "make run: the example farm (examples/sqlite/farm.php): jobs in $(EXAMPLE_VAR)/jobs.sqlite, polled every 5 s; Ctrl-C stops it"
	@echo "  change a job:  php examples/sqlite/jobs.php set heartbeat every=1 replicas=2    (also: list, add ID CLASS, remove ID)"
	@echo "  apply it now:  LRPM_SOCKET=$(EXAMPLE_VAR)/control.sock $(BIN_DIR)/lrpmctl reload"
	@echo "  see the farm:  LRPM_SOCKET=$(EXAMPLE_VAR)/control.sock $(BIN_DIR)/lrpmctl status"
	LRPM_SOCKET=$(CURDIR)/$(EXAMPLE_VAR)/control.sock $(BIN_DIR)/lrpm-host -i 5 examples/sqlite/farm.php

# The farm-harness suites, run a second time with workers forked by the
# supervisor (--no-zygote): the path a farm takes when the zygote refused,
# is down or is still starting.
FARM_SUITES := farm hostile replicas worker_output metrics status_view control_socket clock_mode upgrade stops tasks backtrace

test: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test
	$(MAKE) --no-print-directory test-no-zygote

test-no-zygote:
	LRPM_TEST_NO_ZYGOTE=1 cargo test $(addprefix --test ,$(FARM_SUITES))

browser-deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEB_PACKAGES) $(BROWSER_PACKAGES)"

# The dashboard in headless chromium (tests/dashboard_browser.rs); its
# screenshots refresh docs/screenshots.
test-browser: browser-deps
	LRPM_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots cargo test --features browser-tests --test dashboard_browser

# Builds (or finds up to date) PHP, then lrpm-host and lrpmctl against it.
php: php-lib
	$(PHP_CARGO) build --release $(LOCKED) --bins
	@mkdir -p $(PHP_BUILD)/dist$(PHP_FLAVOUR)
	@# The static binary is the one that ships: without line tables (as the
	@# default image builds its binaries), symbols stay for backtraces.
	@for bin in lrpm-host lrpmctl; do \
		if [ "$(PHP_STATIC)" = 1 ]; then \
			objcopy --strip-debug $(PHP_CARGO_TARGET)/release/$$bin $(PHP_BUILD)/dist$(PHP_FLAVOUR)/$$bin; \
		else \
			cp -p $(PHP_CARGO_TARGET)/release/$$bin $(PHP_BUILD)/dist$(PHP_FLAVOUR)/; \
		fi; \
	done
	@$(PHP_BUILD)/dist$(PHP_FLAVOUR)/lrpm-host --version
	@echo "make php: $(PHP_BUILD)/dist$(PHP_FLAVOUR)/lrpm-host"

php-lib:
	@PHP_VERSION=$(PHP_VERSION) PHP_BUILD=$(PHP_BUILD) PHP_JOBS=$(PHP_JOBS) PHP_STATIC=$(PHP_STATIC) \
		PHP_SRC="$(PHP_SRC)" PHP_APCU_SRC="$(PHP_APCU_SRC)" PHP_REDIS_SRC="$(PHP_REDIS_SRC)" PHP_GEARMAN_SRC="$(PHP_GEARMAN_SRC)" \
		php-src-config/build-php.sh

# The whole suite against PHP 8.4 built from source (cached in build/php-8.4).
test-php84:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory php-lib PHP_VERSION=8.4 PHP_STATIC=0
	$(MAKE) --no-print-directory php-test PHP_VERSION=8.4 PHP_STATIC=0

php-test:
	LRPM_EXPECT_PHP=$(PHP_VERSION) $(PHP_CARGO) test $(LOCKED)

# Debian's python3 (not a pyenv or venv one): matplotlib comes from apt.
bench: bench-deps build
	/usr/bin/python3 bench/harness.py
	/usr/bin/python3 bench/report.py

# The self-contained binary's memory next to the default build's (needs
# make php PHP_STATIC=1 first; PHP 8.4 from source).
bench-static: bench-deps build
	@test -x build/php-8.4/dist-static/lrpm-host || $(MAKE) --no-print-directory php PHP_VERSION=8.4 PHP_STATIC=1
	cd bench && /usr/bin/python3 static_memory.py
	/usr/bin/python3 bench/report.py

bench-quick: bench-deps build
	/usr/bin/python3 bench/harness.py --quick
	/usr/bin/python3 bench/report.py

bench-scale: bench-deps build
	/usr/bin/python3 bench/harness.py --only scale
	/usr/bin/python3 bench/report.py

bench-output: bench-deps build
	/usr/bin/python3 bench/harness.py --only output
	/usr/bin/python3 bench/report.py

bench-messenger: bench-deps build
	/usr/bin/python3 bench/harness.py --only messenger
	/usr/bin/python3 bench/report.py

bench-tasks: bench-deps build
	/usr/bin/python3 bench/harness.py --only tasks
	/usr/bin/python3 bench/report.py

# What an open dashboard costs the supervisor of a 1,000-worker farm.
bench-dashboard: bench-deps build
	/usr/bin/python3 bench/harness.py --only dashboard
	/usr/bin/python3 bench/report.py

# One farm over members on one machine and a real etcd on loopback
# (bench/cluster.py): bring-up, failover, drain, a joining member.
bench-cluster: bench-deps build
	/usr/bin/python3 bench/cluster.py
	/usr/bin/python3 bench/report.py

# Needs a Docker engine; a machine that cannot pull debian:bookworm-slim can
# make it first with tests/docker/base-image.sh.
docker:
	docker build -t $(DOCKER_IMAGE) .

# The static binary of `make php PHP_STATIC=1` alone on a slim base.
docker-static:
	@$(MAKE) --no-print-directory php PHP_STATIC=1
	docker build -f Dockerfile.static --build-arg PHP_VERSION=$(PHP_VERSION) -t $(DOCKER_STATIC_IMAGE) .

docker-test: docker
	tests/docker/check.sh $(DOCKER_IMAGE)

docker-static-test: docker-static
	tests/docker/check.sh $(DOCKER_STATIC_IMAGE) static
