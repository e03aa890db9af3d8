# lrpm-host and lrpmctl on Debian bookworm, running the example farm by default.
#   make docker        builds lrpm-host:latest from this source tree
#   make docker-test   checks the image (graceful docker stop, PID 1, lrpmctl)
# How to run your own app with it, signals, Kubernetes: docs/deploy.md.
#
# Both stages use Debian's packages only: the toolchain is Debian's rustc-web
# and cargo-web (Rust 1.85 in bookworm, newer through bookworm-security), so
# the image builds from a clean clone wherever Debian's archive and the
# crates registry are reachable, and the binary is built against the very
# libphp8.2-embed that the runtime stage installs.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates rustc-web cargo-web gcc libc6-dev \
        libphp8.2-embed php8.2-dev libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Crates first, in a layer of their own: editing the source does not fetch again.
COPY Cargo.toml Cargo.lock ./
# Cargo reads every target the manifest names: empty stand-ins for them
# are enough to fetch. The [[test]] stand-ins stay (tests/ is not copied:
# the image builds only the binaries).
RUN mkdir -p src/bin/lrpmctl tests \
 && touch build.rs src/lib.rs src/main.rs src/bin/lrpmctl/main.rs \
 && for t in $(sed -n '/^\[\[test\]\]/,/^$/s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do touch "tests/$t.rs"; done \
 && cargo fetch --locked \
 && rm -rf build.rs src
COPY build.rs ./
COPY csrc csrc
COPY php php
COPY src src
# Line tables stay out of the image (symbols stay: backtraces name functions).
RUN CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --bins \
 && target/release/lrpm-host --version \
 && target/release/lrpmctl --version

# --- the image: Debian's PHP 8.2 (libphp8.2-embed); the self-contained
# binary of `make php PHP_STATIC=1` has its own file, Dockerfile.static ---
FROM ${DEBIAN_IMAGE}
# libphp8.2-embed brings php8.2-opcache and php8.2-cli (PHP_BINARY in workers).
# Add the extensions your app needs in an image built FROM this one, e.g.
#   RUN apt-get update && apt-get install -y --no-install-recommends php8.2-redis
# (they load from /etc/php/8.2/embed/conf.d, as in php-cli).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libphp8.2-embed ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A non-root user with a fixed numeric id (Kubernetes' runAsNonRoot checks it).
# /run/lrpm-host is the control socket's default folder: owned by that user,
# lrpm-host uses it and `docker exec <container> lrpmctl status` finds it.
RUN groupadd --system --gid 10001 lrpm \
 && useradd --system --uid 10001 --gid lrpm --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin lrpm \
 && install -d -o lrpm -g lrpm -m 0700 /run/lrpm-host
COPY --from=build /src/target/release/lrpm-host /src/target/release/lrpmctl /usr/local/bin/
# The example farm: code owned by root (read-only to the farm), var/ (the
# spool consumer's folders) writable. Your own app: docs/deploy.md, "Your app in the image".
COPY examples/farm.php examples/jobs.json /app/
COPY examples/src /app/src
COPY examples/vendor /app/vendor
RUN install -d -o lrpm -g lrpm -m 0755 /app/var
WORKDIR /app
USER 10001:10001
# SIGTERM: every worker is stopped gracefully (SIGKILL after its
# shutdownTimeoutSeconds); a second SIGTERM kills at once. lrpm-host is PID 1
# and reaps orphans itself: no init needed. Give `docker stop -t` (or
# --stop-timeout) the longest shutdownTimeoutSeconds plus a margin.
STOPSIGNAL SIGTERM
# The event loop answers the control socket: a wedged loop fails this.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["lrpmctl", "version"]
ENTRYPOINT ["lrpm-host"]
CMD ["/app/farm.php"]
