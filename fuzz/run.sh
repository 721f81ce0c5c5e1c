#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) from the committed seed corpus, with
# cargo-fuzz (libFuzzer) in its stable mode (`--sanitizer none`: no sanitizer, the machine's
# one stable toolchain). New inputs go to a scratch copy, so the seeds in git stay as committed.
# A crash fails the run; libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh          # 30 s each, as the test command runs it
#   bash fuzz/run.sh 600      # longer
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
cargo fuzz build -s none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if cargo fuzz run -s none "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
    echo "fuzz $t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1), corpus $(ls "corpus/$t" | wc -l) seeds + $(ls "$work/$t" | wc -l) new"
  else
    echo "fuzz $t: FAILED; the crashing input is in fuzz/artifacts/$t/ (reproduce: cd fuzz && cargo fuzz run -s none $t <file>)" >&2
    grep -E -A30 'panicked|ERROR|SUMMARY' "$log" | head -60 >&2
    status=1
  fi
done
exit $status
