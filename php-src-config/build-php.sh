#!/usr/bin/env bash
# Builds an NTS libphp (embed SAPI) from source for lrpm-host: what `make php`
# runs before building lrpm-host against it. See php-src-config/README.md.
#
# Environment (the Makefile passes these through):
#   PHP_VERSION    major.minor wanted from Debian (default 8.4)
#   PHP_SRC        a PHP source tarball or folder; unset: Debian's source package
#   PHP_REDIS_SRC  a phpredis (PECL redis) tarball or folder to compile in; optional
#   PHP_BUILD      the build folder (default build/php-$PHP_VERSION)
#   PHP_STATIC     1: also make $PHP_BUILD/prefix/lib/libphp.a
#   PHP_JOBS       make -j (default 2)
#
# Incremental: the configuration key (sources, flags, RECIPE) is kept next
# to the build; with the same key and an installed prefix nothing runs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
PHP_VERSION=${PHP_VERSION:-8.4}
PHP_BUILD=${PHP_BUILD:-$root/build/php-$PHP_VERSION}
PHP_JOBS=${PHP_JOBS:-2}
PHP_STATIC=${PHP_STATIC:-0}
prefix=$PHP_BUILD/prefix
tree=$PHP_BUILD/php-src
downloads=$PHP_BUILD/download
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
# Part of the configuration key: raise it when a change to this script
# changes what configure or make produce (not for every edit, since a new
# key means a build from scratch).
RECIPE=1

# The Debian suites the source package comes from: PHP 8.4 is trixie's PHP.
DEBIAN_SUITES=${DEBIAN_SUITES:-trixie trixie-updates}
DEBIAN_SECURITY_SUITES=${DEBIAN_SECURITY_SUITES:-trixie-security}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Headers and tools of what configure-flags enables, on Debian bookworm.
BUILD_PACKAGES="build-essential autoconf bison re2c pkg-config xz-utils
    libxml2-dev libsqlite3-dev libonig-dev libicu-dev libpq-dev libzip-dev
    libcurl4-openssl-dev libssl-dev libsodium-dev zlib1g-dev"
# Only for fetching Debian's source package: dget checks the .dsc's
# signature against debian-keyring and every file against the .dsc.
FETCH_PACKAGES="ca-certificates curl dpkg-dev devscripts debian-keyring"

log() { echo "php: $*" >&2; }
die() { echo "php: error: $*" >&2; exit 1; }

install_packages() {
    local missing="" pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = installed ] || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    log "installing$missing"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# apt-get / apt-cache ($1) with a private configuration: a sources list of its own (deb-src
# entries for the wanted suites) and private index folders, all under the
# build folder and removed afterwards. The machine's own apt sources are
# never touched, so nothing of trixie can end up installed.
apt_private() {
    local tool=$1
    shift
    "$tool" -o Dir::Etc::SourceList="$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$aptdir/lists" -o Dir::Cache="$aptdir/cache" \
        -o APT::Sandbox::User=root "$@"
}

# The newest orig tarball of php$PHP_VERSION that Debian's archive serves,
# into $downloads. First `apt-get source` of the version the suites list;
# when the archive does not serve that one (mirrors and proxies lag behind
# the index), the earlier versions Debian's own changelog names, newest
# first, fetched with dget.
fetch_debian_source() {
    install_packages $FETCH_PACKAGES
    local pkg=php$PHP_VERSION
    aptdir=$PHP_BUILD/apt
    rm -rf "$aptdir"
    mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$downloads"
    trap 'rm -rf "$aptdir"' EXIT
    {
        local suite
        for suite in $DEBIAN_SUITES; do
            echo "deb-src $DEBIAN_MIRROR $suite main"
            echo "deb $DEBIAN_MIRROR $suite main"
        done
        for suite in $DEBIAN_SECURITY_SUITES; do
            echo "deb-src $DEBIAN_SECURITY_MIRROR $suite main"
            echo "deb $DEBIAN_SECURITY_MIRROR $suite main"
        done
    } >"$aptdir/sources.list"
    log "reading Debian's indexes ($DEBIAN_SUITES $DEBIAN_SECURITY_SUITES)"
    apt_private apt-get update -qq || die "apt-get update of the private deb-src list failed"
    apt_private apt-cache showsrc "$pkg" >/dev/null 2>&1 || die "Debian ($DEBIAN_SUITES) has no source package $pkg; name a source with PHP_SRC=..."
    local work=$aptdir/work
    mkdir -p "$work"
    if (cd "$work" && apt_private apt-get source --download-only -qq "$pkg" >"$aptdir/source.log" 2>&1); then
        log "fetched $(cd "$work" && ls ./*.dsc)"
    else
        log "apt-get source $pkg failed ($(grep -m1 -o '[0-9][0-9][0-9]  *Not Found' "$aptdir/source.log" || tail -1 "$aptdir/source.log")); trying the versions Debian's changelog lists"
        rm -f "$work"/*
        (cd "$work" && apt_private apt-get download -qq "$pkg-common" >/dev/null 2>&1) \
            || die "cannot download $pkg-common to read Debian's changelog; name a source with PHP_SRC=..."
        local versions
        versions=$(dpkg-deb --fsys-tarfile "$work"/*.deb | tar -xO "./usr/share/doc/$pkg-common/changelog.Debian.gz" \
            | zcat | sed -n "s/^$pkg (\([^)]*\)).*/\1/p" | head -12)
        rm -f "$work"/*.deb
        local version upstream url base found=""
        for version in $versions; do
            upstream=${version%-*}
            for base in "$DEBIAN_SECURITY_MIRROR/pool/updates/main" "$DEBIAN_MIRROR/pool/main"; do
                url="$base/p/$pkg/${pkg}_${version}.dsc"
                if curl -fsSI -o /dev/null "$url" 2>/dev/null; then
                    (cd "$work" && dget --download-only --quiet "$url") \
                        || die "dget $url failed (signature or checksum)"
                    found=$version
                    break 2
                fi
            done
        done
        [ -n "$found" ] || die "Debian's archive serves none of the $pkg versions its changelog lists; name a source with PHP_SRC=..."
        log "fetched $pkg $found with dget (the index lists $(apt_private apt-cache showsrc "$pkg" | sed -n 's/^Version: //p' | sort -V | tail -1))"
    fi
    mv "$work"/*.orig.tar.* "$downloads"/
    rm -f "$downloads"/*.asc
    rm -rf "$aptdir"
    trap - EXIT
}

# Prints the source to build: PHP_SRC, or the Debian orig tarball
# (fetched once: delete $downloads to fetch a newer one).
php_source() {
    if [ -n "${PHP_SRC:-}" ]; then
        [ -e "$PHP_SRC" ] || die "PHP_SRC=$PHP_SRC does not exist"
        realpath "$PHP_SRC"
        return
    fi
    local found
    found=$(ls "$downloads"/php"$PHP_VERSION"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$found" ]; then
        fetch_debian_source >&2
        found=$(ls "$downloads"/php"$PHP_VERSION"_*.orig.tar.* | sort -V | tail -1)
    fi
    echo "$found"
}

# What identifies a source for the configuration key.
source_id() {
    if [ -d "$1" ]; then
        echo "folder $1 $(cd "$1" && find . -type f -not -path './.git/*' -printf '%P %T@ %s\n' | sort | sha256sum)"
    else
        echo "file $1 $(sha256sum <"$1")"
    fi
}

# Copies a tarball (one top folder) or a folder into $2.
unpack() {
    rm -rf "$2"
    mkdir -p "$2"
    if [ -d "$1" ]; then
        cp -a "$1"/. "$2"/
    else
        tar -xf "$1" -C "$2" --strip-components=1
    fi
}

flags() { grep -v '^[[:space:]]*\(#\|$\)' "$here/configure-flags"; }

main() {
    mkdir -p "$PHP_BUILD"
    install_packages $BUILD_PACKAGES
    local src redis_src="" key
    src=$(php_source)
    [ -n "${PHP_REDIS_SRC:-}" ] && { [ -e "$PHP_REDIS_SRC" ] || die "PHP_REDIS_SRC=$PHP_REDIS_SRC does not exist"; redis_src=$(realpath "$PHP_REDIS_SRC"); }
    key=$( {
        source_id "$src"
        [ -n "$redis_src" ] && source_id "$redis_src"
        flags
        echo "recipe $RECIPE"
    } | sha256sum | cut -d' ' -f1)

    if [ -f "$prefix/.installed" ] && [ "$(cat "$prefix/.installed")" = "$key" ]; then
        log "up to date: $("$prefix/bin/php-config" --version) in $prefix"
    else
        if [ ! -f "$PHP_BUILD/.configured" ] || [ "$(cat "$PHP_BUILD/.configured")" != "$key" ]; then
            rm -f "$PHP_BUILD/.configured" "$prefix/.installed"
            log "unpacking $src"
            unpack "$src" "$tree"
            [ -x "$tree/configure" ] || [ -x "$tree/buildconf" ] || die "$src is not a PHP source tree (no configure, no buildconf)"
            local extra=()
            if [ -n "$redis_src" ]; then
                log "adding phpredis from $redis_src as ext/redis"
                unpack "$redis_src" "$tree/ext/redis"
                # The PECL tarball has package.xml next to the folder;
                # an unpacked one may have the sources one level down.
                if [ ! -f "$tree/ext/redis/config.m4" ]; then
                    local inner
                    inner=$(dirname "$(find "$tree/ext/redis" -maxdepth 2 -name config.m4 | head -1)")
                    [ -f "$inner/config.m4" ] || die "$redis_src holds no config.m4 (not phpredis sources)"
                    mv "$inner" "$PHP_BUILD/redis-tmp" && rm -rf "$tree/ext/redis" && mv "$PHP_BUILD/redis-tmp" "$tree/ext/redis"
                fi
                extra+=(--enable-redis)
            fi
            # A git checkout has no configure; an added extension needs a new one.
            if [ ! -x "$tree/configure" ] || [ -n "$redis_src" ]; then
                log "buildconf"
                (cd "$tree" && ./buildconf --force >"$PHP_BUILD/buildconf.log" 2>&1) || { tail -20 "$PHP_BUILD/buildconf.log"; die "buildconf failed (log: $PHP_BUILD/buildconf.log)"; }
            fi
            log "configure (log: $PHP_BUILD/configure.log)"
            # shellcheck disable=SC2046
            (cd "$tree" && ./configure $(flags) "${extra[@]}" --prefix="$prefix" \
                --with-config-file-path="$prefix/etc" --with-config-file-scan-dir="$prefix/etc/conf.d" \
                >"$PHP_BUILD/configure.log" 2>&1) || { tail -30 "$PHP_BUILD/configure.log"; die "configure failed (log: $PHP_BUILD/configure.log)"; }
            echo "$key" >"$PHP_BUILD/.configured"
        fi
        log "make -j$PHP_JOBS (log: $PHP_BUILD/make.log)"
        local started=$SECONDS
        (cd "$tree" && make -j"$PHP_JOBS" >"$PHP_BUILD/make.log" 2>&1) || { tail -30 "$PHP_BUILD/make.log"; die "make failed (log: $PHP_BUILD/make.log)"; }
        log "built in $((SECONDS - started)) s; installing into $prefix"
        rm -rf "$prefix"
        (cd "$tree" && make install >"$PHP_BUILD/install.log" 2>&1) || { tail -30 "$PHP_BUILD/install.log"; die "make install failed (log: $PHP_BUILD/install.log)"; }
        # Before PHP 8.5 OPcache is a shared Zend extension: load it as
        # Debian's conf.d does. (From 8.5 on it is part of libphp.)
        mkdir -p "$prefix/etc/conf.d"
        if [ -f "$("$prefix/bin/php-config" --extension-dir)/opcache.so" ]; then
            echo "zend_extension=opcache.so" >"$prefix/etc/conf.d/10-opcache.ini"
        fi
        rm -f "$prefix/lib/libphp.a"
        echo "$key" >"$prefix/.installed"
        log "installed $("$prefix/bin/php-config" --version) in $prefix"
    fi

    if [ "$PHP_STATIC" = 1 ] && [ ! -f "$prefix/lib/libphp.a" ]; then
        static_archive
    fi
}

# libphp.a from the objects libphp.so was linked from (position-independent,
# so the archive links into lrpm-host's PIE), plus OPcache's objects before
# PHP 8.5, where OPcache exists only as a shared Zend extension: the shim
# registers it itself when it is linked in (LRPM_STATIC_OPCACHE, build.rs).
static_archive() {
    local objects lo pic list=() opcache_objects
    objects=$(cd "$tree" && printf 'lrpm-print:\n\t@echo $(PHP_GLOBAL_OBJS) $(PHP_SAPI_OBJS)\n' | make -s -f Makefile -f - lrpm-print)
    opcache_objects=$(cd "$tree" && printf 'lrpm-print:\n\t@echo $(shared_objects_opcache)\n' | make -s -f Makefile -f - lrpm-print)
    for lo in $objects $opcache_objects; do
        pic=$(sed -n "s/^pic_object='\(.*\)'$/\1/p" "$tree/$lo")
        [ -n "$pic" ] && [ "$pic" != none ] || die "$lo has no position-independent object"
        list+=("$tree/$(dirname "$lo")/$pic")
    done
    rm -f "$prefix/lib/libphp.a.tmp"
    ar rcs "$prefix/lib/libphp.a.tmp" "${list[@]}"
    mv "$prefix/lib/libphp.a.tmp" "$prefix/lib/libphp.a"
    log "static archive $prefix/lib/libphp.a (${#list[@]} objects$([ -n "$opcache_objects" ] && echo ', OPcache included'))"
}

main "$@"
