#!/usr/bin/env bash
# Soak and failure tests that are too slow or too broker-dependent for every CI run:
# `scripts/soak.sh [ROUNDS]` (default 5) runs the ignored tests (the kill -9 crash test: 200 000
# records, ten kills at random moments) that many times and prints a line per round.
set -euo pipefail
cd "$(dirname "$0")/.."
export "$(scripts/install.sh | tail -n 1)"
rounds="${1:-5}"
fails=0
for i in $(seq "$rounds"); do
  if cargo nextest run --workspace --locked --run-ignored only --no-fail-fast > "target/soak-$i.log" 2>&1; then
    echo "round $i: passed"
  else
    fails=$((fails + 1)); echo "round $i: FAILED (target/soak-$i.log)"
  fi
done
echo "$((rounds - fails)) passed, $fails failed"
[ "$fails" -eq 0 ]
