#!/usr/bin/env bash
# Install what a fresh machine needs to build, run and test Vigil. Idempotent: a second run
# finds everything in place and does nothing.
#
#   - Debian packages the build needs (librdkafka's TLS and SASL libraries);
#   - cargo-nextest, the test runner;
#   - the Tansu Kafka broker, built once from crates.io and cached under
#     $VIGIL_TOOLS_DIR (default ~/.cache/vigil), keyed by version and features;
#   - moto, an S3-compatible server (the store-in-a-bucket tests), from PyPI into a virtual
#     environment in the same cache, keyed by version;
#   - for the console's browser test: Debian's chromium, and the console's npm packages
#     (`npm ci` in console/, again only when package-lock.json changed).
#
#   scripts/install.sh           everything the tests need
#   scripts/install.sh --demo    only what scripts/demo.sh needs: the broker (a lean build, with
#                                only the in-memory storage the demo uses, unless the tests'
#                                build is already there)
#
# Prints the environment the tests need on its last lines (VIGIL_MOTO_BIN=…, then
# VIGIL_TANSU_BIN=… last).
set -euo pipefail

demo=""
case "${1:-}" in
  --demo) demo=1 ;;
  "") ;;
  *) echo "usage: scripts/install.sh [--demo]" >&2; exit 2 ;;
esac

TANSU_VERSION="0.6.0"
# dynostore: the in-memory engine (memory://) every test and the demo use; libsql: the SQLite
# engine the detection bench runs the broker on (VIGIL_TANSU_STORAGE=sqlite).
TANSU_FEATURES="dynostore,libsql"
TANSU_DEMO_FEATURES="dynostore"
MOTO_VERSION="5.2.1"
tools="${VIGIL_TOOLS_DIR:-$HOME/.cache/vigil}"
# Build dependencies of librdkafka (bundled by rdkafka-sys) with TLS and SASL/GSSAPI support,
# make for it and for jemalloc (tikv-jemalloc-sys, the process allocator);
# openssl (the tool) makes the RSA keys of the API tests.
apt_packages=(pkg-config libssl-dev libsasl2-dev openssl make python3-venv)
# The console's browser test drives Debian's chromium (playwright-core cannot download one here).
if [ -z "$demo" ]; then apt_packages+=(chromium); fi

log() { printf '[install] %s\n' "$*" >&2; }

missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { log "cargo is required (rustup) and was not found"; exit 1; }

if [ -z "$demo" ] && ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

tansu_root="$tools/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}"
if [ -n "$demo" ] && [ ! -x "$tansu_root/bin/tansu" ]; then
  # The demo's lean broker: only the engine it uses, built in the dev profile without debug
  # info (a fraction of a release build's time; a broker at demo rates does not need more).
  tansu_root="$tools/tansu-$TANSU_VERSION-${TANSU_DEMO_FEATURES//,/-}-dev"
  tansu_bin="$tansu_root/bin/tansu"
  if [ ! -x "$tansu_bin" ]; then
    log "building the Tansu broker $TANSU_VERSION for the demo (features $TANSU_DEMO_FEATURES, dev profile): once"
    mkdir -p "$tools"
    CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_DEV_INCREMENTAL=false cargo install --locked --debug "tansu@$TANSU_VERSION" \
      --no-default-features --features "$TANSU_DEMO_FEATURES" --root "$tansu_root.tmp"
    rm -rf "$tansu_root"
    mv "$tansu_root.tmp" "$tansu_root"
  fi
fi
tansu_bin="$tansu_root/bin/tansu"
if [ ! -x "$tansu_bin" ]; then
  log "building the Tansu broker $TANSU_VERSION (features $TANSU_FEATURES): about 11 minutes, once"
  mkdir -p "$tools"
  cargo install --locked "tansu@$TANSU_VERSION" --features "$TANSU_FEATURES" --root "$tansu_root.tmp"
  rm -rf "$tansu_root"
  mv "$tansu_root.tmp" "$tansu_root"
fi
"$tansu_bin" --help >/dev/null 2>&1 || { log "$tansu_bin does not run"; exit 1; }
log "tansu: $tansu_bin"
if [ -n "$demo" ]; then
  echo "VIGIL_TANSU_BIN=$tansu_bin"
  exit 0
fi

moto_root="$tools/moto-$MOTO_VERSION"
moto_bin="$moto_root/bin/moto_server"
if [ ! -x "$moto_bin" ]; then
  log "installing moto $MOTO_VERSION (an S3-compatible server for the tests)"
  rm -rf "$moto_root.tmp"
  python3 -m venv "$moto_root.tmp"
  "$moto_root.tmp/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  rm -rf "$moto_root"
  mv "$moto_root.tmp" "$moto_root"
  # A venv's scripts name their interpreter by absolute path: made again where it now lives.
  sed -i "1s|^#!.*|#!$moto_root/bin/python3|" "$moto_root"/bin/moto_server "$moto_root"/bin/pip
fi
"$moto_bin" --help >/dev/null 2>&1 || { log "$moto_bin does not run"; exit 1; }
log "moto: $moto_bin"


# The console's npm packages (the browser test's playwright-core, and what `npm run build`
# needs), exactly as package-lock.json pins them; again only when the lock file changed.
command -v npm >/dev/null || {
  log "apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
}
here="$(cd "$(dirname "$0")/.." && pwd)"
lock_sum=$(sha256sum "$here/console/package-lock.json" | cut -d' ' -f1)
stamp="$here/console/node_modules/.vigil-lock-sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  log "npm ci (console/)"
  (cd "$here/console" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$lock_sum" >"$stamp"
fi
log "console packages: $here/console/node_modules"

# The broker's last: the scripts that need it alone take the last line.
echo "VIGIL_MOTO_BIN=$moto_bin"
echo "VIGIL_TANSU_BIN=$tansu_bin"
