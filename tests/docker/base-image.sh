#!/usr/bin/env bash
# Makes a local debian:bookworm-slim for a Docker engine that cannot pull
# from Docker Hub (an offline or egress-filtered machine): debootstrap's
# minbase bookworm from Debian's archive, trimmed as the official slim image
# is (no docs, man pages or locales; apt cleans up after itself), with the
# archive's bookworm, bookworm-updates and bookworm-security suites.
# Certificates in /usr/local/share/ca-certificates (a TLS-intercepting
# proxy's CA) are copied in, so apt and cargo inside `docker build` trust
# what this machine trusts. Does nothing when the image exists already.
#
#   tests/docker/base-image.sh [TAG]     (default debian:bookworm-slim; needs root, debootstrap)
set -euo pipefail

tag=${1:-debian:bookworm-slim}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image: $tag exists"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
echo "base-image: debootstrap bookworm into $root"
debootstrap --variant=minbase bookworm "$root" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}

# The mirror debootstrap used, for the updates and security suites too.
mirror=$(awk '$1 == "deb" { print $2; exit }' "$root/etc/apt/sources.list")
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# What the official slim image configures.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
DPKG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
find "$root/usr/share/doc" -mindepth 2 -type f ! -name copyright -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/*.log

# Extra CAs: picked up by update-ca-certificates when a build installs ca-certificates.
shopt -s nullglob
extra=(/usr/local/share/ca-certificates/*.crt)
if ((${#extra[@]})); then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "${extra[@]}" "$root/usr/local/share/ca-certificates/"
    echo "base-image: copied ${#extra[@]} extra CA certificate(s)"
fi

tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "base-image: imported $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
