#!/usr/bin/env bash
# The main command: the whole product on the embedded default, on simulated traffic.
#
# Starts a Kafka broker (Tansu, in memory, on a free loopback port), `vigil serve` into
# ./vigil-data with the default rule pack and the analyst API on localhost (with an API key made
# for this run), and `vigil simulate`: a 12-service zero-trust mesh (OPA/Envoy decisions,
# Hubble flows, Kubernetes audit events) with the six attack scenarios mixed in, one every
# --attack-every seconds. The terminal shows the attacks as they are injected, the alerts as
# they fire and a progress line (ingest rate, lag, alerts so far). Once the API is up it prints
# the analyst console's address (the API's listener, http://127.0.0.1:8080/ when free), the key
# to sign in with and the signing key to pin for Prove; then curl lines to try. Ctrl-C (or --duration) stops the traffic, lets `vigil serve`
# flush and commit, verifies the store against its signed checkpoints and the Kafka anchors,
# and stops the broker.
#
#   scripts/demo.sh                          # until Ctrl-C; data in ./vigil-data
#   scripts/demo.sh --duration 120           # stop by itself after 120 s
#   scripts/demo.sh --log-format json        # structured logs (JSON lines) for machines
#   scripts/demo.sh --rate 50 --attack-every 10
#   VIGIL_DATA_DIR=/tmp/x scripts/demo.sh    # another data directory
#   VIGIL_BIN=target/debug/vigil scripts/demo.sh   # a vigil already built (else: built, profile demo)
#
# The data directory is replaced by the next run (its broker starts empty); only a directory
# this script made is ever removed. It keeps what the run left for `vigil query`, `vigil
# verify` and the API key in <data dir>/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="" rate=50 attack_every=10 log_format=text
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --rate) rate=${2:?--rate needs events per second}; shift 2 ;;
    --attack-every) attack_every=${2:?--attack-every needs seconds}; shift 2 ;;
    --log-format) log_format=${2:?--log-format needs text or json}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$log_format" in text | json) ;; *) echo "--log-format: text or json, not '$log_format'" >&2; exit 2 ;; esac

# What the script itself says: plain lines, or JSON lines with --log-format json.
say() {
  if [ "$log_format" = json ]; then
    python3 -c 'import json,sys,datetime; print(json.dumps({"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(), "level": "INFO", "target": "demo", "fields": {"message": sys.argv[1]}}), flush=True)' "$*"
  else
    printf '== %s\n' "$*"
  fi
}

# What is missing gets installed (only what the demo needs: the broker, a lean build) while
# vigil builds, the two at once: on a fresh 2-core machine the first run is mostly these two
# builds, and each leaves the other's serial stretches (linking, the big crates' codegen) to
# fill. The demo profile is the dev profile without debug info: a fraction of a release
# build's time, and fast enough for the demo's traffic (benches keep the release profile).
# Progress on stderr as they go; with --log-format json, as JSON lines once they are done.
install_log=$(mktemp)
build_log=$(mktemp)
target_dir="${CARGO_TARGET_DIR:-target}"
build_pid=""
if [ -z "${VIGIL_BIN:-}" ]; then
  say "building vigil (profile demo) and, if missing, the broker, at once: the first run takes several minutes"
  cargo build --profile demo --locked --quiet >"$build_log" 2>&1 &
  build_pid=$!
fi
if [ "$log_format" = json ]; then
  env_line=$(scripts/install.sh --demo 2>"$install_log" | tail -n 1) || {
    cat "$install_log" >&2
    exit 1
  }
  while IFS= read -r line; do say "$line" >&2; done <"$install_log"
else
  env_line=$(scripts/install.sh --demo | tail -n 1)
fi
rm -f "$install_log"
export "$env_line" # VIGIL_TANSU_BIN
if [ -n "${VIGIL_BIN:-}" ]; then
  vigil=$VIGIL_BIN
else
  if ! wait "$build_pid"; then
    cat "$build_log" >&2
    echo "building vigil failed" >&2
    exit 1
  fi
  vigil="$target_dir/demo/vigil"
fi
rm -f "$build_log"
data_dir="${VIGIL_DATA_DIR:-./vigil-data}"
if [ -e "$data_dir" ]; then
  if [ -e "$data_dir/.vigil-demo" ]; then
    rm -rf "$data_dir"
  else
    echo "$data_dir exists and was not made by this demo; set VIGIL_DATA_DIR to another path" >&2
    exit 2
  fi
fi
mkdir -p "$data_dir/demo" && touch "$data_dir/.vigil-demo"
demo="$data_dir/demo"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_free() { python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null; }

broker_pid="" serve_pid="" sim_pid="" stopping=""
# Stop in order: the traffic, then `vigil serve` (it flushes, commits and publishes its last
# checkpoints while the broker is still up), then the broker. The broker runs in its own
# session so that a Ctrl-C in the terminal does not stop it before `vigil serve` is done.
stop_all() {
  if [ -n "$sim_pid" ]; then
    kill -TERM "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    sim_pid=""
  fi
  if [ -n "$serve_pid" ]; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""
  fi
}
stop_broker() {
  if [ -n "$broker_pid" ]; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
  fi
}
trap 'stop_all; stop_broker' EXIT
# Ctrl-C or TERM: note it; the loops below end and the clean stop follows. (A command cut
# short by the signal must not end the script under `set -e`: hence `|| true` on the sleeps.)
trap 'stopping=1' INT TERM

port=$(free_port)
brokers="127.0.0.1:$port"
setsid "$VIGIL_TANSU_BIN" broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
  --storage-engine memory://tansu/ >"$demo/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$VIGIL_TANSU_BIN" topic create mesh --broker "tcp://$brokers" --partitions 3 >/dev/null
"$VIGIL_TANSU_BIN" topic create mesh.dlq --broker "tcp://$brokers" --partitions 1 >/dev/null
"$VIGIL_TANSU_BIN" topic create vigil.checkpoints --broker "tcp://$brokers" --partitions 1 >/dev/null
say "Kafka broker (Tansu, in memory) at $brokers; topic 'mesh' (3 partitions)"

# The API: on 127.0.0.1:8080 when free, else a free port; one key with every role, made for
# this run (its SHA-256 goes into the configuration, the key itself only into $demo/api-key).
api_port=8080
port_free "$api_port" || api_port=$(free_port)
api="http://127.0.0.1:$api_port"
(umask 077 && "$vigil" api-key --name demo --role reader --role analyst --role admin \
  >"$demo/api-key" 2>"$demo/api-key.entry")
{
  echo "# Written by scripts/demo.sh for this run."
  echo "[api]"
  echo "listen = \"127.0.0.1:$api_port\""
  echo
  sed -n '/^\[\[api.keys\]\]/,/^$/p' "$demo/api-key.entry"
} >"$demo/vigil.toml"
rm -f "$demo/api-key.entry"

say "vigil serve → $data_dir (default rule pack; API on $api)"
"$vigil" --log-format "$log_format" --config "$demo/vigil.toml" serve --brokers "$brokers" \
  --topics mesh --data-dir "$data_dir" --group-id vigil-demo --progress-secs 5 &
serve_pid=$!
for _ in $(seq 300); do
  [ -n "$stopping" ] && break
  curl -fsS -o /dev/null "$api/readyz" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "vigil serve stopped; see above" >&2; exit 1; }
  sleep 0.2 || true
done

# The console first: where it is, the key to sign in with, the signing key to pin for Prove.
"$vigil" keys show --data-dir "$data_dir" >"$demo/vigil.keys"
say "console: $api/ — sign in with the key in $demo/api-key; to Prove evidence in the browser, pin the signing keys in $demo/vigil.keys"
if [ "$log_format" = text ]; then
  cat <<EOF

== Open the console:   $api/
   sign in with:       $(cat "$demo/api-key")
   pin (for Prove):    $(grep -v '^#' "$demo/vigil.keys" | head -n 1)
   (the alerts appear there as the attacks below are injected, one every ${attack_every} s)
EOF
fi

sim_args=(simulate --brokers "$brokers" --topic mesh --rate "$rate" --attack-every "$attack_every"
  --scenario all --record "$demo/simulated.jsonl")
[ "$log_format" = json ] && sim_args+=(--json)
"$vigil" "${sim_args[@]}" &
sim_pid=$!

if [ "$log_format" = text ]; then
  cat <<EOF

== Or from another terminal:
  export VIGIL_KEY=\$(cat $demo/api-key)
  curl -s -H "Authorization: Bearer \$VIGIL_KEY" $api/v1/alerts | python3 -m json.tool
  curl -s -H "Authorization: Bearer \$VIGIL_KEY" $api/v1/query \\
    -d '{"sql": "SELECT source_format, decision, count(*) AS n FROM events GROUP BY 1, 2 ORDER BY 3 DESC"}'
  curl -s -H "Authorization: Bearer \$VIGIL_KEY" -H 'Accept: text/csv' $api/v1/query \\
    -d '{"sql": "SELECT event_time, caller_principal, caller_ip, callee_service, action, reason FROM events WHERE decision = '"'"'deny'"'"' ORDER BY event_time DESC LIMIT 10"}'
  curl -s -H "Authorization: Bearer \$VIGIL_KEY" $api/metrics | grep -E '^vigil_(records|alerts|partition_lag)'
  $vigil query --data-dir $data_dir "SELECT rule_id, severity, event_count, group_key FROM alerts"
  $vigil alerts --data-dir $data_dir
  $vigil proof --data-dir $data_dir --log mesh/0 --index 0 --out proof.json
(Ctrl-C stops everything: the traffic, then vigil serve — flushed and committed — then the broker.)

EOF
fi

started=$SECONDS
while [ -z "$stopping" ]; do
  if [ -n "$duration" ] && [ $((SECONDS - started)) -ge "$duration" ]; then break; fi
  kill -0 "$serve_pid" 2>/dev/null || { say "vigil serve stopped by itself"; serve_pid=""; break; }
  sleep 0.2 || true
done
trap '' INT # a second Ctrl-C does not cut the clean stop short
say "stopping: the traffic, then vigil serve (flush, commit, last checkpoints)"
stop_all

say "alerts stored (newest revision of each; the attacks the simulator injected are in $demo/simulated.jsonl)"
if [ "$log_format" = json ]; then
  "$vigil" --log-format json alerts --data-dir "$data_dir" --limit 1000 --json || true
else
  "$vigil" alerts --data-dir "$data_dir" --limit 20 || true
fi
say "vigil verify: every hash and Merkle root recomputed from the raw bytes, every signed checkpoint checked against the pinned public keys and the anchors in Kafka; what it saw is kept as the trusted state for later (offline) runs"
verified=0
verify=(verify --data-dir "$data_dir" --keys "$demo/vigil.keys" --anchor-kafka "$brokers"
  --trusted "$demo/trusted.json" --update-trusted)
if [ "$log_format" = json ]; then
  "$vigil" --log-format json "${verify[@]}" --json >"$demo/verify.json" || verified=$?
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$demo/verify.json"
else
  "$vigil" "${verify[@]}" || verified=$?
fi
stop_broker
say "stopped; the data stays in $data_dir: vigil query / alerts work on it offline, and so does vigil verify --data-dir $data_dir --keys $demo/vigil.keys --trusted $demo/trusted.json (an auditor keeps those two files elsewhere)"
exit "$verified"
