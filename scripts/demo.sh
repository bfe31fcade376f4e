#!/usr/bin/env bash
# The main command, on the embedded default: start a Kafka broker (Tansu, in memory, on a free
# loopback port), send it the real sample events of every supported format plus a few broken
# records, run `vigil serve` into ./vigil-data, and query what it stored. Stops everything it
# started when done (or on Ctrl-C).
#
#   scripts/demo.sh            # data in ./vigil-data (kept afterwards for `vigil query`;
#                              # replaced by the next run, whose broker starts empty)
#   VIGIL_DATA_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export "$(scripts/install.sh | tail -n 1)"   # VIGIL_TANSU_BIN
echo "building vigil (release; the first build takes several minutes)…"
cargo build --release --locked --quiet
vigil=target/release/vigil
data=../shared/data
data_dir="${VIGIL_DATA_DIR:-./vigil-data}"
# The broker is in memory, so a store from an earlier run describes a broker that is gone:
# every run starts a fresh one. Only a directory this script made is ever removed.
if [ -e "$data_dir" ]; then
  if [ -e "$data_dir/.vigil-demo" ]; then
    rm -rf "$data_dir"
  else
    echo "$data_dir exists and was not made by this demo; set VIGIL_DATA_DIR to another path" >&2
    exit 2
  fi
fi
mkdir -p "$data_dir" && touch "$data_dir/.vigil-demo"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
brokers="127.0.0.1:$port"
"$VIGIL_TANSU_BIN" broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
  --storage-engine memory://tansu/ >"$tmp/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$VIGIL_TANSU_BIN" topic create audit --broker "tcp://$brokers" --partitions 3 >/dev/null
"$VIGIL_TANSU_BIN" topic create audit.dlq --broker "tcp://$brokers" --partitions 1 >/dev/null
"$VIGIL_TANSU_BIN" topic create vigil.checkpoints --broker "tcp://$brokers" --partitions 1 >/dev/null
echo "== broker up at $brokers; topic 'audit' (3 partitions) and its dead-letter topic 'audit.dlq'"

# Sample traffic: every real sample event, as its emitter would send it.
python3 - "$data" "$tmp/traffic.jsonl" <<'PY'
import json, sys, pathlib
data, out = pathlib.Path(sys.argv[1]), open(sys.argv[2], "w")
for f in ["opa/opa_decision_logs.jsonl", "hubble/hubble_flows.jsonl"]:
    out.writelines(l if l.endswith("\n") else l + "\n" for l in open(data / f) if l.strip())
for f in sorted((data / "k8s-audit-falco/trace_files").glob("*.json")):
    out.writelines(l if l.endswith("\n") else l + "\n" for l in open(f) if l.strip())
for shape in ["k8s_audit", "gcp_k8s_audit", "azure_k8s_audit"]:
    for l in open(data / f"panther/by_event_shape/{shape}.jsonl"):
        out.write(json.dumps(json.loads(l)["log"]) + "\n")
out.write(json.dumps(json.load(open("schemas/native-event.schema.json"))["examples"][0]) + "\n")
out.write('{"decision_id": 42, "result": true}\n{"this is": "not a known format"}\nnot json at all\n')
# A few attacks, happening now: a credential-stuffing burst (60 denied logins from one
# address) and a guess that worked (6 denials, then an allow, from another).
import datetime
def opa(i, ip, allow):
    t = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"decision_id": f"demo-{i}", "path": "envoy/authz/allow", "result": allow,
        "timestamp": t, "input": {"attributes": {
            "source": {"address": {"socketAddress": {"address": ip, "portValue": 41000}}},
            "destination": {"principal": "spiffe://cluster.local/ns/auth/sa/login"},
            "request": {"http": {"method": "POST", "path": "/login", "host": "login.auth"}}}}}) + "\n"
for i in range(60):
    out.write(opa(i, "203.0.113.50", False))
for i in range(6):
    out.write(opa(100 + i, "198.51.100.23", False))
out.write(opa(200, "198.51.100.23", True))
PY
"$vigil" produce --brokers "$brokers" --topic audit "$tmp/traffic.jsonl"

echo "== vigil serve → $data_dir"
"$vigil" serve --brokers "$brokers" --topics audit --data-dir "$data_dir" --progress-secs 1 &
pids+=($!)
want=$(wc -l < "$tmp/traffic.jsonl")
for _ in $(seq 120); do
  have=$("$vigil" query --data-dir "$data_dir" --format csv "SELECT count(DISTINCT kafka_offset * 10 + kafka_partition) AS n FROM stored WHERE kafka_topic = 'audit'" 2>/dev/null | tail -n 1 || echo 0)
  [ "${have:-0}" -ge "$want" ] 2>/dev/null && break
  sleep 0.5
done
kill -TERM "${pids[1]}"; wait "${pids[1]}" || true
pids=("${pids[0]}")

echo
echo "== stored: every record, decoded or not, hash-chained per partition"
"$vigil" query --data-dir "$data_dir" "SELECT source_format, decision, count(*) AS events FROM events GROUP BY 1, 2 ORDER BY 1, 2"
echo "== denials, newest first"
"$vigil" query --data-dir "$data_dir" "SELECT event_time, source_format, caller_principal, caller_ip, action, resource, reason FROM events WHERE decision = 'deny' ORDER BY event_time DESC LIMIT 8"
echo "== records that failed to decode (also copied to audit.dlq with the reason in headers)"
"$vigil" query --data-dir "$data_dir" "SELECT kafka_partition, kafka_offset, store_error FROM rejected ORDER BY 1, 2"
echo "== alerts (the default rules; stored before they are reported)"
"$vigil" alerts --data-dir "$data_dir"
first=$("$vigil" alerts --data-dir "$data_dir" --json --limit 1 2>/dev/null | sed -n 's/.*"alert_id":"\([0-9a-f]*\)".*/\1/p')
if [ -n "$first" ]; then
  echo "== the alert lifecycle: acknowledged (who, when, why), recorded in Vigil's own chained log"
  "$vigil" alerts ack "$first" --note "demo: looking into it" --data-dir "$data_dir" --brokers "$brokers" || true
  "$vigil" query --data-dir "$data_dir" "SELECT event_time, caller_principal, action, decision, resource FROM events WHERE kafka_topic = 'vigil.audit' ORDER BY kafka_offset DESC LIMIT 3"
fi
echo "== vigil verify: every hash and root recomputed, every signed checkpoint checked against"
echo "   the public keys and the anchors in the vigil.checkpoints topic (an auditor takes the"
echo "   keys once, out of band; here they are read from the store for the demo)"
"$vigil" keys show --data-dir "$data_dir" > "$tmp/vigil.keys"
"$vigil" verify --data-dir "$data_dir" --keys "$tmp/vigil.keys" --anchor-kafka "$brokers" --decoded || true
echo "== one event (the first denied login, by its decision id) proven with the public key alone"
"$vigil" proof --data-dir "$data_dir" --event demo-0 --out "$tmp/proof.json"
"$vigil" verify-proof "$tmp/proof.json" --keys "$tmp/vigil.keys" || true
cat <<EOF

Try next:
  $vigil keys show --data-dir $data_dir > vigil.keys
  $vigil verify --data-dir $data_dir --keys vigil.keys --trusted seen.json --update-trusted
  $vigil query --data-dir $data_dir "SELECT caller_principal, count(*) FROM events WHERE kind = 'admin_audit' GROUP BY 1 ORDER BY 2 DESC"
  $vigil query --data-dir $data_dir --format json "SELECT * FROM events LIMIT 1"
  $vigil decode ../shared/data/hubble/hubble_flows.jsonl
  $vigil alerts --data-dir $data_dir --json
  $vigil alerts resolve <alert id> --note "why" --data-dir $data_dir
  $vigil query --data-dir $data_dir "SELECT rule_id, severity, event_count, group_key FROM alerts"
  $vigil rules list
  $vigil rules backtest --data-dir $data_dir
EOF
