#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls exactly this): install what is missing,
# check formatting, lints, the one-arrow rule and the console's committed build, then run every
# test — unit tests, the decoders against the real samples, the pipeline against a real Tansu
# broker (the consumer-group failure test included), the console in a real browser. The kill -9 crash soak, long fuzzing and full benchmarks are
# separate commands (scripts/soak.sh, scripts/fuzz.sh, cargo bench --bench decode|ingest).
set -euo pipefail
cd "$(dirname "$0")/.."

# VIGIL_TANSU_BIN (the broker) and VIGIL_MOTO_BIN (the S3 server) for the tests.
envs=$(scripts/install.sh | grep -E '^VIGIL_[A-Z_]+=')
while IFS= read -r kv; do export "$kv"; done <<< "$envs"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== fmt"
cargo fmt --all -- --check

echo "== one arrow"
# Two versions of arrow (or parquet) in one build is a bug: every crate uses the one DataFusion uses.
dups=$(cargo tree --workspace -e normal,build --prefix none --format '{p}' \
  | sed 's/ (.*//' | sort -u | awk '{print $1}' | grep -E '^(arrow|parquet)(-[a-z-]+)?$' | uniq -d || true)
if [ -n "$dups" ]; then echo "duplicate arrow/parquet versions:"; echo "$dups"; exit 1; fi

echo "== commands call no other command"
# src/: a command module (`*_cmd.rs`, or its directory) uses src/services and the stage crates,
# never another command module; services use no command at all.
calls=$(grep -rnoE 'crate::[a-z_]+_cmd::' src \
  | awk -F: '{ split($1, p, "/"); own = p[2]; sub(/\.rs$/, "", own); if (own != $5) print }')
if [ -n "$calls" ]; then echo "a command module or service calls a command module:"; echo "$calls"; exit 1; fi

echo "== console: the committed build is what its sources build to"
# console/dist is committed (so building vigil needs no Node); it must be exactly what
# console/src builds to with the locked packages (type-checked by tsc, bundled by Vite).
(cd console && npm run build --silent >/dev/null)
if [ -n "$(git status --porcelain -- console/dist)" ]; then
  git status --short -- console/dist
  echo "console/dist differs from what console/src builds to: run (cd console && npm run build) and commit it"
  exit 1
fi

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== benches compile (debug; run them with cargo bench)"
cargo test --workspace --benches --no-run --locked

echo "== tests"
cargo test --workspace --doc --locked
cargo nextest run --workspace --locked --no-fail-fast
