#!/usr/bin/env bash
# Runs Strata's whole test suite on a fresh machine: installs what the tests need, builds every
# binary the end-to-end tests start (one cargo profile), then runs all tests with nextest.
#
#   bash tests/run.sh            # everything
#   bash tests/run.sh -E 'test(resume)'   # extra arguments go to `cargo nextest run`
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# The disk-fault tests mount small tmpfs filesystems: they need root and mount(8).
if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: the disk-fault tests mount tmpfs filesystems and need root" >&2
  exit 1
fi
# Debian packages the tests use: mount(8) for the tmpfs tests, prometheus and promtool for the
# metrics tests (a real Prometheus scrapes a local cluster).
missing=()
need mount || missing+=(mount)
need prometheus && need promtool || missing+=(prometheus)
# The container tests (deploy/compose.yaml, tests/faults): Docker with Compose, debootstrap for
# the local base image, iptables and nsenter for the nemesis.
need docker || missing+=(docker.io)
docker compose version >/dev/null 2>&1 || need docker-compose || missing+=(docker-compose)
need debootstrap || missing+=(debootstrap)
need iptables || missing+=(iptables)
need nsenter || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The cold-tier tests run the real aws-sdk-s3 against moto's S3 server (it models GLACIER,
# DEEP_ARCHIVE, RestoreObject and x-amz-restore), started on loopback by the tests.
if ! need moto_server && ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "installing moto[server] (pip)" >&2
  python3 -m pip install --quiet 'moto[server]' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

if ! need cargo-nextest && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# Binaries first: the end-to-end tests run target/debug/strata-node and target/debug/strata.
cargo build --workspace --bins --tests --locked
status=0
cargo nextest run --workspace --no-fail-fast --locked "$@" || status=$?
# Doc tests (nextest does not run them): among them the compile_fail proof that a chunk lock
# guard cannot be held across an .await.
if [ $# -eq 0 ]; then
  cargo test --doc --workspace --locked || status=$?
  # Every fuzz target for 30 s from the committed seeds (fuzz/README.md).
  bash fuzz/run.sh 30 || status=$?
  # The short fault campaign: 5 nodes in containers, every fault once (tests/faults/README.md).
  { bash deploy/images/build.sh --binaries target/debug \
      && target/debug/strata-faults --seconds 12; } || status=$?
fi
exit $status
