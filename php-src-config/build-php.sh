#!/usr/bin/env bash
# Builds an NTS libphp (embed SAPI) from source for lrpm-host: what `make php`
# runs before building lrpm-host against it. See php-src-config/README.md.
#
# Environment (the Makefile passes these through):
#   PHP_VERSION    major.minor wanted from Debian (default 8.4)
#   PHP_SRC        a PHP source tarball or folder; unset: Debian's source package
#   PHP_APCU_SRC   an APCu (PECL apcu) tarball or folder; unset: Debian's php-apcu source
#   PHP_REDIS_SRC  a phpredis (PECL redis) tarball or folder; unset: Debian's php-redis source
#   PHP_GEARMAN_SRC  a PECL gearman tarball or folder; unset: Debian's php-gearman source
#                  (not with PHP_STATIC=1)
#   PHP_BUILD      the build folder (default build/php-$PHP_VERSION)
#   PHP_STATIC     1: also make $PHP_BUILD/prefix/lib/libphp.a
#   PHP_JOBS       make -j (default 2)
#
# Incremental: the configuration key (the sources' content, flags, prefix,
# RECIPE) is kept next to the build; with the same key and an installed
# prefix nothing runs.
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
RECIPE=2

# The Debian suites the source package comes from: PHP 8.4 is trixie's PHP.
DEBIAN_SUITES=${DEBIAN_SUITES:-trixie trixie-updates}
DEBIAN_SECURITY_SUITES=${DEBIAN_SECURITY_SUITES:-trixie-security}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Headers and tools of what configure-flags enables, on Debian bookworm.
BUILD_PACKAGES="build-essential autoconf bison re2c pkg-config xz-utils
    libxml2-dev libsqlite3-dev libonig-dev libicu-dev libpq-dev libzip-dev
    libcurl4-openssl-dev libssl-dev libsodium-dev zlib1g-dev libgearman-dev"
# Only for fetching Debian's source packages: apt checks the files against
# the signed Sources index, dget (the fallback) the .dsc's signature against
# debian-keyring and every file against the .dsc.
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

# The PECL extensions compiled into libphp: name (ext/NAME), Debian's
# source package, the variable that names another source, configure flag.
PECL_EXTENSIONS="apcu:php-apcu:PHP_APCU_SRC:--enable-apcu
redis:php-redis:PHP_REDIS_SRC:--enable-redis"
# Gearman (tests/stops.rs drives a real gearmand) in the shared libphp only:
# the static binary would need libgearman's static archive and its
# dependencies, and no one deploys gearman workers from it.
if [ "${PHP_STATIC:-0}" != 1 ]; then
    PECL_EXTENSIONS="$PECL_EXTENSIONS
gearman:php-gearman:PHP_GEARMAN_SRC:--with-gearman"
fi

# The private apt configuration, once per run: sources list, index
# folders; removed when the script ends.
aptdir=""
private_apt_ready() {
    [ -n "$aptdir" ] && return 0
    install_packages $FETCH_PACKAGES
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
}

# The newest orig tarball of Debian's source package $1 that the archive
# serves, into $downloads ($2: a binary package of it whose changelog lists
# its versions; $3: the variable that names a source instead). In order:
#  1. `apt-get source` of the version the suites list (apt checks every
#     file against the signed Sources index);
#  2. when the archive serves that version's orig tarball but not its
#     .dsc or Debian diff (mirrors and proxies lag behind the index): that
#     tarball alone, checked against the SHA-256 the signed index lists;
#  3. when it does not serve that version at all: the earlier versions
#     Debian's own changelog names, newest first, fetched with dget.
fetch_debian_source() {
    local pkg=$1 changelog_pkg=$2 variable=$3
    private_apt_ready
    apt_private apt-cache showsrc "$pkg" >/dev/null 2>&1 || die "Debian ($DEBIAN_SUITES) has no source package $pkg; name a source with $variable=..."
    local work=$aptdir/work-$pkg
    rm -rf "$work"
    mkdir -p "$work"
    # What apt-get source fetches: 'URL' NAME SIZE SHA256:HASH, from the signed index.
    local uris
    uris=$(cd "$work" && apt_private apt-get source --print-uris -qq "$pkg") || die "apt-get source --print-uris $pkg failed"
    if (cd "$work" && apt_private apt-get source --download-only -qq "$pkg" >"$aptdir/source-$pkg.log" 2>&1); then
        log "fetched $(cd "$work" && ls ./*.dsc)"
    else
        local failure orig url name hash
        failure=$(grep -m1 -o '[0-9][0-9][0-9]  *Not Found' "$aptdir/source-$pkg.log" || tail -1 "$aptdir/source-$pkg.log")
        orig=$(grep "^'[^']*' [^ ]*\.orig\.tar\.[a-z0-9]* [0-9]* SHA256:[0-9a-f]\{64\}$" <<<"$uris" | head -1)
        [ -n "$orig" ] || die "Debian's index lists no orig tarball with a SHA-256 for $pkg"
        url=$(cut -d"'" -f2 <<<"$orig")
        name=$(cut -d' ' -f2 <<<"$orig")
        hash=${orig##*SHA256:}
        [ -f "$work/$name" ] || curl -fsS -o "$work/$name" "$url" 2>/dev/null || rm -f "$work/$name"
        if [ -f "$work/$name" ] && [ "$(sha256sum <"$work/$name" | cut -d' ' -f1)" = "$hash" ]; then
            log "apt-get source $pkg failed ($failure); the archive serves $name, whose SHA-256 matches Debian's signed index: taking it"
            find "$work" -maxdepth 1 -type f -not -name "$name" -delete
        else
            log "apt-get source $pkg failed ($failure), $name too; trying the versions Debian's changelog lists"
            rm -f "$work"/*
            (cd "$work" && apt_private apt-get download -qq "$changelog_pkg" >/dev/null 2>&1) \
                || die "cannot download $changelog_pkg to read Debian's changelog of $pkg; name a source with $variable=..."
            local versions
            versions=$(dpkg-deb --fsys-tarfile "$work"/*.deb | tar -xO "./usr/share/doc/$changelog_pkg/changelog.Debian.gz" \
                | zcat | sed -n "s/^$pkg (\([^)]*\)).*/\1/p" | head -12)
            rm -f "$work"/*.deb
            local version base found=""
            for version in $versions; do
                for base in "$DEBIAN_SECURITY_MIRROR/pool/updates/main" "$DEBIAN_MIRROR/pool/main"; do
                    url="$base/${pkg:0:1}/$pkg/${pkg}_${version}.dsc"
                    if curl -fsSI -o /dev/null "$url" 2>/dev/null; then
                        (cd "$work" && dget --download-only --quiet "$url") \
                            || die "dget $url failed (signature or checksum)"
                        found=$version
                        break 2
                    fi
                done
            done
            [ -n "$found" ] || die "Debian's archive serves none of the $pkg versions its changelog lists; name a source with $variable=..."
            log "fetched $pkg $found with dget (the index lists $(apt_private apt-cache showsrc "$pkg" | sed -n 's/^Version: //p' | sort -V | tail -1))"
        fi
    fi
    mv "$work"/*.orig.tar.* "$downloads"/
    rm -f "$downloads"/*.asc
    rm -rf "$work"
}

# Sets $picked to the newest orig tarball of Debian's source package $1 in
# $downloads, fetched first when there is none (delete $downloads to fetch
# newer ones).
debian_source() {
    picked=$(ls "$downloads/$1"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$picked" ]; then
        fetch_debian_source "$@" >&2
        picked=$(ls "$downloads/$1"_*.orig.tar.* | sort -V | tail -1)
    fi
}

# Sets $picked to a source to build: the tarball or folder the variable $1
# names, or else Debian's source package $2 ($3: debian_source).
source_of() {
    local variable=$1
    if [ -n "${!variable:-}" ]; then
        [ -e "${!variable}" ] || die "$variable=${!variable} does not exist"
        picked=$(realpath "${!variable}")
    else
        debian_source "$2" "$3" "$variable"
    fi
}

# What identifies a source for the configuration key: its content only
# (a tarball's bytes; a folder's file names and contents), not where it
# lies, nor file times.
source_id() {
    if [ -d "$1" ]; then
        echo "folder $(cd "$1" && find . -type f -not -path './.git/*' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum)"
    else
        echo "file $(sha256sum <"$1")"
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

# Copies the sources of PECL extension $1 from $2 (a tarball or folder)
# to ext/$1 of the PHP tree. A PECL tarball has package.xml next to the
# extension's folder (unpack strips that level); a folder may have the
# sources one level down.
add_extension() {
    local name=$1 from=$2 dir=$tree/ext/$1 inner
    log "adding $name from $from as ext/$name"
    unpack "$from" "$dir"
    if [ ! -f "$dir/config.m4" ]; then
        inner=$(find "$dir" -mindepth 2 -maxdepth 2 -name config.m4 | head -1)
        [ -n "$inner" ] || die "$from holds no config.m4 (not the sources of a PHP extension)"
        mv "$(dirname "$inner")" "$PHP_BUILD/$name-tmp" && rm -rf "$dir" && mv "$PHP_BUILD/$name-tmp" "$dir"
    fi
    grep -q "PHP_ARG_\(ENABLE\|WITH\)(\[\{0,1\}$name\]\{0,1\}," "$dir/config.m4" \
        || die "$from: ext/$name/config.m4 has no --enable-$name or --with-$name"
}

main() {
    mkdir -p "$PHP_BUILD"
    install_packages $BUILD_PACKAGES
    local src key name pkg variable flag i picked
    # The PECL extensions' names, sources and configure flags.
    local ext_names=() ext_srcs=() ext_flags=()
    source_of PHP_SRC "php$PHP_VERSION" "php$PHP_VERSION-common"
    src=$picked
    while IFS=: read -r name pkg variable flag; do
        source_of "$variable" "$pkg" "$pkg"
        ext_names+=("$name") ext_srcs+=("$picked") ext_flags+=("$flag")
    done <<<"$PECL_EXTENSIONS"
    if [ -n "$aptdir" ]; then
        rm -rf "$aptdir"
        trap - EXIT
    fi
    # The prefix is part of the key: configure writes it into libphp (the
    # php.ini paths, OPcache's extension_dir) and php-config.
    key=$( {
        echo "php $(source_id "$src")"
        for i in "${!ext_names[@]}"; do echo "${ext_names[i]} $(source_id "${ext_srcs[i]}")"; done
        flags
        echo "prefix $prefix"
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
            for i in "${!ext_names[@]}"; do
                add_extension "${ext_names[i]}" "${ext_srcs[i]}"
            done
            # A git checkout has no configure; the added extensions need a new one.
            if [ ! -x "$tree/configure" ] || [ ${#ext_names[@]} -gt 0 ]; then
                log "buildconf"
                (cd "$tree" && ./buildconf --force >"$PHP_BUILD/buildconf.log" 2>&1) || { tail -20 "$PHP_BUILD/buildconf.log"; die "buildconf failed (log: $PHP_BUILD/buildconf.log)"; }
            fi
            log "configure (log: $PHP_BUILD/configure.log)"
            # shellcheck disable=SC2046
            (cd "$tree" && ./configure $(flags) "${ext_flags[@]}" --prefix="$prefix" \
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
        # Debian's PHP finds the PHP libraries Debian installs (php-amqplib,
        # phpseclib, Symfony) in /usr/share/php: so does this one.
        echo 'include_path=".:/usr/share/php"' >"$prefix/etc/conf.d/20-include-path.ini"
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
