#!/usr/bin/env bash
# Records examples/triage/llmsim/, the triage app's bundled recording, with `llmsim-agent capture`.
#
#   sudo examples/triage/record.sh            # against llmsim's provider simulator (the default)
#   sudo --preserve-env=OPENAI_API_KEY,ANTHROPIC_API_KEY,GEMINI_API_KEY,XAI_API_KEY \
#        examples/triage/record.sh --real     # against the real providers, with your keys
#
# Simulator mode needs no keys and no network. It makes a throwaway CA and a leaf for the
# provider host names with openssl, creates a private network namespace whose hosts file maps
# api.openai.com, api.anthropic.com, generativelanguage.googleapis.com and api.x.ai to loopback,
# starts tests/fake_provider/fake_provider.py in it on 127.0.0.1:443 and [::1]:443 (answering
# after 300 to 900 ms, a small model's latency, so replay has time to save), and runs the
# unmodified app there under the agent with dummy keys (sk-test-llmsim-openai-key, ...) and
# SSL_CERT_FILE/REQUESTS_CA_BUNDLE pointing at a bundle that trusts the throwaway CA.
#
# --real skips all of that: the app runs as you, with the keys in your environment (every
# provider whose key is set; that many calls are billed: 60 per provider, a few cents in all).
#
# Either way the capture goes to a temporary directory first and is checked: the agent's
# summary (exit code 0, no incomplete exchange, no dropped kernel event), one exchange file per
# LLM call, no key value anywhere in the files, and `llmsim-agent verify`. Only then does it
# replace examples/triage/llmsim/exchanges, and the app's deterministic output (stdout without
# the timings section) goes to examples/triage/recorded-output.txt, its --json-out results to
# examples/triage/recorded-results.json: what a replay must reproduce.
#
# Needs root (eBPF, network namespaces), python3 with the SDKs of scripts/setup.sh, openssl,
# iproute2, and target/debug/llmsim-agent (built with `cargo build -p llmsim-agent` if missing).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
AGENT=${LLMSIM_AGENT:-$ROOT/target/debug/llmsim-agent}
FAKE_PROVIDER=$ROOT/tests/fake_provider/fake_provider.py
HOSTS=(api.openai.com api.anthropic.com generativelanguage.googleapis.com api.x.ai openrouter.ai)
KEY_VARS=(OPENAI_API_KEY ANTHROPIC_API_KEY GEMINI_API_KEY XAI_API_KEY)
# Dummy keys for the simulator. They reach the wire (the simulator checks that a key is sent)
# and must never reach the recording: the agent redacts them, and this script checks.
SIM_KEYS=(sk-test-llmsim-openai-key sk-ant-test-llmsim-anthropic-key test-llmsim-gemini-key xai-test-llmsim-key)

say() { printf 'record: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

MODE=sim
case "${1:-}" in
    "") ;;
    --real) MODE=real ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument ${1}; usage: record.sh [--real]" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root (the agent loads eBPF programs): run it with sudo"
for tool in python3 openssl ip; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup.sh installs what is missing)"
done
if [ ! -x "$AGENT" ]; then
    say "building llmsim-agent"
    (cd "$ROOT" && cargo build -p llmsim-agent) || die "cannot build llmsim-agent"
fi

TMP=$(mktemp -d /tmp/llmsim-triage-record.XXXXXX)
# The app writes its --json-out results here; under sudo --real it runs as the invoking user.
chmod 711 "$TMP"
mkdir "$TMP/app"
[ "$MODE" = real ] && [ -n "${SUDO_UID:-}" ] && chown "$SUDO_UID" "$TMP/app"
NETNS=""
PROVIDER_PID=""
cleanup() {
    if [ -n "$PROVIDER_PID" ]; then kill "$PROVIDER_PID" 2>/dev/null || true; wait "$PROVIDER_PID" 2>/dev/null || true; fi
    if [ -n "$NETNS" ]; then ip netns del "$NETNS" 2>/dev/null || true; rm -rf "/etc/netns/$NETNS"; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# The app's environment: no proxies or base-URL overrides leaking in from the caller.
APP_ENV=(-u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u NO_PROXY -u http_proxy -u https_proxy -u all_proxy
         -u no_proxy -u OPENAI_BASE_URL -u ANTHROPIC_BASE_URL -u GOOGLE_GEMINI_BASE_URL -u GOOGLE_API_KEY
         -u GOOGLE_GENAI_USE_VERTEXAI PYTHONDONTWRITEBYTECODE=1)
CAPTURE_ARGS=()
SECRETS=()

if [ "$MODE" = sim ]; then
    say "making a throwaway CA and a leaf for the provider hosts"
    san="DNS:localhost,IP:127.0.0.1,IP:::1"
    for h in "${HOSTS[@]}"; do san="$san,DNS:$h"; done
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=llmsim triage recording CA" -keyout "$TMP/ca-key.pem" -out "$TMP/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=api.openai.com" \
        -keyout "$TMP/leaf-key.pem" -out "$TMP/leaf.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$san" > "$TMP/leaf.ext"
    openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca-key.pem" -CAcreateserial \
        -days 2 -extfile "$TMP/leaf.ext" -out "$TMP/leaf.pem" 2>/dev/null
    cat /etc/ssl/certs/ca-certificates.crt "$TMP/ca.pem" > "$TMP/bundle.pem" 2>/dev/null || cp "$TMP/ca.pem" "$TMP/bundle.pem"

    NETNS=llmsim-triage-$$
    say "network namespace $NETNS: loopback only, provider names mapped to it"
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
    mkdir -p "/etc/netns/$NETNS"
    printf '127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback %s\n' \
        "${HOSTS[*]}" "${HOSTS[*]}" > "/etc/netns/$NETNS/hosts"

    say "starting the provider simulator ($FAKE_PROVIDER)"
    ip netns exec "$NETNS" python3 -u "$FAKE_PROVIDER" --listen 127.0.0.1:443 --listen '[::1]:443' \
        --cert "$TMP/leaf.pem" --key "$TMP/leaf-key.pem" --log "$TMP/requests.jsonl" \
        --latency-ms 300-900 \
        > "$TMP/provider.out" 2> "$TMP/provider.err" &
    PROVIDER_PID=$!
    for _ in $(seq 300); do
        grep -qx ready "$TMP/provider.out" 2>/dev/null && break
        kill -0 "$PROVIDER_PID" 2>/dev/null || die "the provider simulator exited: $(cat "$TMP/provider.err")"
        sleep 0.1
    done
    grep -qx ready "$TMP/provider.out" || die "the provider simulator did not start within 30 s"

    for i in "${!KEY_VARS[@]}"; do APP_ENV+=("${KEY_VARS[$i]}=${SIM_KEYS[$i]}"); done
    APP_ENV+=("SSL_CERT_FILE=$TMP/bundle.pem" "REQUESTS_CA_BUNDLE=$TMP/bundle.pem")
    SECRETS=("${SIM_KEYS[@]}")
    # `ip netns exec` needs root, so the app runs as root inside the namespace.
    CAPTURE_ARGS=(--as-root -- ip netns exec "$NETNS")
    PROVIDERS=4
else
    PROVIDERS=0
    for var in "${KEY_VARS[@]}"; do
        if [ -n "${!var:-}" ]; then PROVIDERS=$((PROVIDERS + 1)); SECRETS+=("${!var}"); fi
    done
    [ "$PROVIDERS" -gt 0 ] || die "--real needs at least one of ${KEY_VARS[*]} (sudo drops them: use sudo --preserve-env=...)"
    say "recording against the REAL providers with $PROVIDERS key(s) from your environment: $((PROVIDERS * 60)) billed calls"
    CAPTURE_ARGS=(--)
fi

TICKETS=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$HERE/tickets.json")
EXPECTED=$((TICKETS * 3 * PROVIDERS))
say "capturing: llmsim-agent capture -- python3 examples/triage/app.py ($EXPECTED calls)"
started=$(date +%s.%N)
set +e
env "${APP_ENV[@]}" "$AGENT" capture --out "$TMP/llmsim" --json "${CAPTURE_ARGS[@]}" \
    python3 "$HERE/app.py" --json-out "$TMP/app/results.json" > "$TMP/stdout" 2> "$TMP/stderr"
status=$?
set -e
elapsed=$(python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$started")

# stdout: the app's report, then the agent's JSON summary.
python3 - "$TMP" <<'PY' || { cat "$TMP/stderr" >&2; die "the capture failed (exit $status)"; }
import json, sys
tmp = sys.argv[1]
text = open(f"{tmp}/stdout", encoding="utf-8").read()
cut = text.rfind("\n{")
app, summary = text[:cut + 1], json.loads(text[cut + 1:])
open(f"{tmp}/app-stdout.txt", "w", encoding="utf-8").write(app)
# What a replay must reproduce: everything above the timings section.
open(f"{tmp}/recorded-output.txt", "w", encoding="utf-8").write(app.split("\n--- timings")[0].rstrip("\n") + "\n")
json.dump(summary, open(f"{tmp}/summary.json", "w"), indent=2)
dropped = sum(summary.get("events_dropped", {}).values())
problems = []
if summary.get("exit_code") != 0:
    problems.append(f"the app exited with {summary.get('exit_code')}")
if summary.get("exchanges_incomplete"):
    problems.append(f"{summary['exchanges_incomplete']} incomplete exchange(s)")
if dropped:
    problems.append(f"{dropped} kernel event(s) dropped")
if problems:
    print("record: error: " + "; ".join(problems), file=sys.stderr)
    print(app, file=sys.stderr)
    sys.exit(1)
PY

files=$(find "$TMP/llmsim/exchanges" -name '*.json' | wc -l)
[ "$files" -eq "$EXPECTED" ] || die "$files exchange files, expected $EXPECTED (one per call)"
for secret in "${SECRETS[@]}"; do
    if grep -rqF -- "$secret" "$TMP/llmsim"; then die "a key value reached the recording (${secret:0:4}...)"; fi
done
"$AGENT" verify "$TMP/llmsim" >&2 || die "llmsim-agent verify found problems"
if [ "$MODE" = sim ]; then
    served=$(wc -l < "$TMP/requests.jsonl")
    [ "$served" -eq "$EXPECTED" ] || die "the simulator served $served requests, expected $EXPECTED"
fi

mkdir -p "$HERE/llmsim"
rm -rf "$HERE/llmsim/exchanges"
mv "$TMP/llmsim/exchanges" "$HERE/llmsim/exchanges"
cp "$TMP/recorded-output.txt" "$HERE/recorded-output.txt"
cp "$TMP/app/results.json" "$HERE/recorded-results.json"
if [ -n "${SUDO_UID:-}" ]; then
    chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$HERE/llmsim" "$HERE/recorded-output.txt" "$HERE/recorded-results.json"
fi

cat "$TMP/app-stdout.txt"
bytes=$(du -sb "$HERE/llmsim/exchanges" | cut -f1)
say "recorded $files exchanges ($bytes bytes) in ${elapsed}s into examples/triage/llmsim ($MODE mode); verify passed, no key in any file"
