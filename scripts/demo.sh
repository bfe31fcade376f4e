#!/usr/bin/env bash
# The main command, on the embedded default: build Vigil and show what it sees in the real
# sample events of every supported format (OPA, Hubble, Kubernetes audit, GKE, AKS, native).
# Grows into the full pipeline (broker, store, API, simulated traffic) as the issues land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh >/dev/null
cargo build --release --locked --quiet
vigil=target/release/vigil
data=../shared/data

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

show() { # show TITLE FILE [vigil decode flags]
  local title=$1 file=$2; shift 2
  printf '\n== %s (%s)\n' "$title" "$file"
  "$vigil" decode "$@" "$file" 2>"$tmp/stderr" | cut -c1-240
  cat "$tmp/stderr"
}
show "OPA decision logs" "$data/opa/opa_decision_logs.jsonl"
show "Cilium Hubble flows" "$data/hubble/hubble_flows.jsonl"
show "Kubernetes audit (Falco: some-user creates a namespace)" \
  "$data/k8s-audit-falco/trace_files/some-user_creates_namespace_foo.json"
python3 -c 'import json,sys
for l in open(sys.argv[1]).readlines()[:3]: print(json.dumps(json.loads(l)["log"]))' \
  "$data/panther/by_event_shape/gcp_k8s_audit.jsonl" > "$tmp/gke.jsonl"
show "GKE audit (Panther samples, first 3)" "$tmp/gke.jsonl"
python3 -c 'import json; print(json.dumps(json.load(open("schemas/native-event.schema.json"))["examples"][0]))' > "$tmp/native.jsonl"
show "Vigil native event" "$tmp/native.jsonl"
printf '\nTry next:\n  %s decode --help\n  %s schema\n  echo '"'"'{"kind":"Event","verb":7}'"'"' | %s decode   # a bad record: the error names the field\n' "$vigil" "$vigil" "$vigil"
