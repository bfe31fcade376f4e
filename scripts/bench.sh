#!/usr/bin/env bash
# Every benchmark in the repository, then BENCHMARKS.md from their figures: decode, chain +
# write, end-to-end ingest against a bare consumer, detection throughput, the labelled
# detection benchmark (recall, false alerts, latency), produce-to-alert latency, peak memory
# with a million detection groups, verify, queries against DuckDB, storage per event.
#
#   scripts/bench.sh                 # all of them (about 40–50 minutes here, after the build)
#   scripts/bench.sh decode verify   # some (BENCHMARKS.md keeps the others' rows, marked
#                                    # with the date and commit they were measured at)
#
# Release build; the real Tansu broker for the Kafka-facing benches (scripts/install.sh
# installs it); DuckDB (pip) for the query bench. Each bench's own output is kept in
# benches/logs/<bench>.log (committed with BENCHMARKS.md: the raw output behind its rows; a
# bench not run this time keeps its last log, as its rows are carried over), and in
# target/bench-run/<bench>.log; criterion's results in target/bench-run/criterion; the figures
# measured outside criterion in target/bench-run/figures.jsonl (benches/support/report.rs).
# Sizes: the benches' own VIGIL_BENCH_* variables (see each bench's header).
set -euo pipefail
cd "$(dirname "$0")/.."

all=(decode store verify detect sigma ingest alert_latency detection memory query)
benches=("$@")
[ ${#benches[@]} -eq 0 ] && benches=("${all[@]}")
for b in "${benches[@]}"; do
  [[ " ${all[*]} " == *" $b "* ]] || { echo "unknown bench '$b' (one of: ${all[*]})" >&2; exit 2; }
done

# VIGIL_TANSU_BIN (the broker) and VIGIL_MOTO_BIN (the S3 server of the store bench).
envs=$(scripts/install.sh | grep -E '^VIGIL_[A-Z_]+=')
while IFS= read -r kv; do export "$kv"; done <<< "$envs"
run_dir="$PWD/target/bench-run"
rm -rf "$run_dir" && mkdir -p "$run_dir"
export VIGIL_BENCH_REPORT="$run_dir/figures.jsonl" CRITERION_HOME="$run_dir/criterion"
: >"$VIGIL_BENCH_REPORT"

echo "== building the benches (release)"
cargo bench --locked --no-run --quiet
failed=()
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!BENCHMARKS.md' ':!benches/logs' || echo " (with local changes)")
mkdir -p benches/logs
for b in "${benches[@]}"; do
  echo "== cargo bench --bench $b"
  at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  if ! cargo bench --locked --quiet --bench "$b" 2>&1 | tee "$run_dir/$b.log"; then
    failed+=("$b")
  fi
  # The kept copy: what ran, where and when, then the output without terminal redraws.
  { echo "# cargo bench --locked --bench $b — commit $commit, started $at (UTC), $(nproc) cores"
    sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -e 's/.*\r//' "$run_dir/$b.log"; } >"benches/logs/$b.log"
done
# A partial run keeps the other benches' rows from the last report (marked with their date).
cp BENCHMARKS.md "$run_dir/previous.md" 2>/dev/null || true
if [ ${#benches[@]} -lt ${#all[@]} ]; then export VIGIL_BENCH_PREVIOUS="$run_dir/previous.md"; fi
python3 scripts/bench_report.py "$run_dir" "$started" "${failed[*]:-}" "${benches[@]}" >"$run_dir/BENCHMARKS.md"
mv "$run_dir/BENCHMARKS.md" BENCHMARKS.md
echo "== BENCHMARKS.md written"
cat BENCHMARKS.md
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]} (see target/bench-run/<bench>.log)" >&2; exit 1; }
