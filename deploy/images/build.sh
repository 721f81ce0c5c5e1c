#!/usr/bin/env bash
# Builds Strata's container images from local parts only: no registry is needed.
#
#   bash deploy/images/build.sh [--binaries DIR] [--tag TAG]
#
# 1. debian:bookworm-slim: when the engine lacks it, a minimal Debian bookworm root filesystem
#    is made with debootstrap (from the host's Debian mirror) and `docker import`ed under that
#    name, so deploy/Dockerfile's FROM line finds it.
# 2. strata:TAG (default latest): deploy/Dockerfile with BUILD_IMAGE=debian:bookworm-slim copies
#    strata-node and strata from DIR (default target/release, built with `cargo build --release`
#    when missing) instead of compiling in rust:1-bookworm.
# 3. strata-prometheus:latest: deploy/prometheus/Dockerfile, Debian's prometheus package in the
#    same base.
# Where registries exist, `docker compose -f deploy/compose.yaml build` does all of this from
# the published base images instead.
set -euo pipefail
cd "$(dirname "$0")/../.."

binaries=""
tag=latest
while [ $# -gt 0 ]; do
    case "$1" in
        --binaries) binaries=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "unknown argument: $1 (use --binaries DIR, --tag TAG)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not running (docker info fails)" >&2; exit 1; }

base=debian:bookworm-slim
if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        echo "debootstrap is missing: apt-get install debootstrap (it builds the $base base image)" >&2
        exit 1
    }
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    root=$(mktemp -d /tmp/strata-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "==> $base: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        echo "debootstrap failed (full log: $root.log)" >&2
        exit 1
    }
    # As the official slim image: no package caches or documentation.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root.log"
    printf 'deb %s bookworm main\n' "$mirror" >"$root/etc/apt/sources.list"
    tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
    echo "==> $base imported ($(docker image inspect -f '{{.Size}}' "$base" | awk '{printf "%.0f MiB", $1/1048576}'))"
fi

if [ -z "$binaries" ]; then
    binaries=target/release
    [ -x "$binaries/strata-node" ] && [ -x "$binaries/strata" ] ||
        cargo build --release --locked --bin strata-node --bin strata
fi
for b in strata-node strata; do
    [ -x "$binaries/$b" ] || { echo "$binaries/$b is missing: build it first" >&2; exit 1; }
done
# The binaries go where the Dockerfile's build stage looks for them; the context leaves out
# target/ (.dockerignore).
rm -rf deploy/images/bin && mkdir -p deploy/images/bin
cp "$binaries/strata-node" "$binaries/strata" deploy/images/bin/
# Debug builds carry their debug info: the image does not need it.
if command -v strip >/dev/null; then strip --strip-debug deploy/images/bin/*; fi
echo "==> strata:$tag from $binaries"
docker build -q --build-arg BUILD_IMAGE="$base" -f deploy/Dockerfile -t "strata:$tag" . >/dev/null
rm -rf deploy/images/bin
# The classic builder keeps the build stage as an untagged image: drop it.
docker image prune -f --filter label=org.strata.stage=build >/dev/null

if ! docker image inspect strata-prometheus:latest >/dev/null 2>&1; then
    echo "==> strata-prometheus:latest (Debian's prometheus package)"
    docker build -q -t strata-prometheus:latest deploy/prometheus >/dev/null
fi
echo "==> images: strata:$tag strata-prometheus:latest"
