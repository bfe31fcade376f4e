#!/usr/bin/env bash
# Fuzz the decoders: `scripts/fuzz.sh [SECONDS]` (default 300). Not part of CI: run it before
# resolving decoder work and report the figures. Seeds the corpus from the real samples in
# ../shared/data, so the fuzzer starts from every real format. Crashes land in
# fuzz/artifacts/decode/ with the input that caused them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus=fuzz/corpus/decode
mkdir -p "$corpus"
data=../shared/data
if [ -d "$data" ]; then
  # One seed per real event (a line), plus an OPA upload (a gzip JSON array) and the native example.
  i=0
  while IFS= read -r -d '' f; do
    while IFS= read -r line || [ -n "$line" ]; do
      [ -n "$line" ] || continue
      printf '%s' "$line" > "$corpus/seed-$i"; i=$((i+1))
    done < "$f"
  done < <(find "$data/opa" "$data/hubble" "$data/k8s-audit-falco/trace_files" -type f \( -name '*.jsonl' -o -name '*.json' \) ! -name '*provenance*' -print0)
  for shape in k8s_audit gcp_k8s_audit azure_k8s_audit; do
    python3 -c 'import json,sys
for i,l in enumerate(open(sys.argv[1])):
    if i % 8 == 0: open(f"{sys.argv[2]}/seed-{sys.argv[3]}-{i}","w").write(json.dumps(json.loads(l)["log"]))' \
      "$data/panther/by_event_shape/$shape.jsonl" "$corpus" "$shape"
  done
  (printf '['; paste -sd, "$data/opa/opa_decision_logs.jsonl"; printf ']') | gzip -c > "$corpus/seed-opa-upload.gz"
fi
python3 -c 'import json; print(json.dumps(json.load(open("schemas/native-event.schema.json"))["examples"][0]))' > "$corpus/seed-native"

echo "fuzzing the decoders for ${seconds}s with $(ls "$corpus" | wc -l) corpus entries"
# cargo-fuzz needs nightly-only flags; this machine has one stable toolchain, which accepts
# them with RUSTC_BOOTSTRAP.
RUSTC_BOOTSTRAP=1 cargo fuzz run decode "$corpus" -- \
  -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
