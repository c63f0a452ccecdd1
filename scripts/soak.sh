#!/usr/bin/env bash
# Soak test (not CI; about 35 minutes at the defaults): the release build
# takes TOTAL messages at a steady RATE msg/s from 50 sessions (STARTTLS,
# AUTH, 100 messages per connection), signs each with RSA-2048 and Ed25519,
# queues it durably and forwards it to a counting sink. Every 10 s it
# samples the relay's RSS, goroutines, open files and queue length into
# OUT.csv, and plots them over time into OUT.png (gnuplot). At the end it
# checks that every message arrived and prints the first and last samples.
#
#   scripts/soak.sh [--total 1000000] [--rate 500] [--out docs/soak]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

TOTAL=1000000 RATE=500 OUT=docs/soak
while [ $# -gt 0 ]; do
  case $1 in
    --total) TOTAL=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v gnuplot >/dev/null || {
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
}

W=$(mktemp -d /var/tmp/smarthost-soak.XXXXXX)
SINK_PORT=3625 RELAY_PORT=3687 METRICS_PORT=3690
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$W/bin" "$W/dkim"
scripts/build.sh -o "$W/bin/smarthost" >/dev/null
go build -o "$W/bin/smtpload" ./cmd/smtpload
SH=$W/bin/smarthost LOAD=$W/bin/smtpload
$SH dkim keygen --domain example.com --selector rsa --algo rsa2048 --out "$W/dkim" >/dev/null
$SH dkim keygen --domain example.com --selector ed --algo ed25519 --out "$W/dkim" >/dev/null
printf 'users:\n  soak:\n    password_hash: "%s"\n    addresses: [load@example.com]\n' \
  "$(echo soak-pw | $SH passwd)" > "$W/users.yaml"
cat > "$W/relay.yaml" <<CONF
hostname: smarthost-soak.test
listeners: [{address: "127.0.0.1:$RELAY_PORT", mode: starttls}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: $W/users.yaml}}
policy: {max_recipients: 100, max_message_size: 25MiB}
ratelimit: {backend: memory, connections_per_ip: 10000, max_connections: 10000}
dkim:
  domains:
    example.com:
      - {selector: rsa, key_file: $W/dkim/example.com.rsa.key}
      - {selector: ed, key_file: $W/dkim/example.com.ed.key}
upstreams: [{name: sink, url: "smtp://127.0.0.1:$SINK_PORT", tls: none, max_connections: 20}]
queue: {dir: $W/queue, workers: 20}
metrics: {listen: "127.0.0.1:$METRICS_PORT"}
log: {format: text, level: warn}
CONF
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

$LOAD sink --listen "127.0.0.1:$SINK_PORT" --expect "$TOTAL" > "$W/sink.out" 2>&1 & sink=$!; pids+=($sink)
$SH serve --config "$W/relay.yaml" 2> "$W/relay.log" & relay=$!; pids+=($relay)
wait_port $RELAY_PORT; wait_port $SINK_PORT

metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sample() {
  local t=$1
  printf '%d,%d,%s,%d,%s\n' "$t" "$(awk '/^VmRSS:/ { print $2 }' /proc/$relay/status)" "$(metric go_goroutines)" \
    "$(ls /proc/$relay/fd | wc -l)" "$(metric smarthost_queue_messages)"
}
echo "seconds,rss_kib,goroutines,open_files,queue" > "$OUT.csv"
start=$(date +%s)
( while kill -0 $relay 2>/dev/null; do sample $(( $(date +%s) - start )) >> "$OUT.csv"; sleep 10; done ) & pids+=($!)

echo "soak.sh: $TOTAL messages at $RATE/s; samples in $OUT.csv" >&2
$LOAD run --addr "127.0.0.1:$RELAY_PORT" --starttls --user soak --pass soak-pw --sessions 50 --per-session 100 \
  --size 10240 --total "$TOTAL" --rate "$RATE" --from load@example.com | tee "$W/load.out"
wait $sink || { echo "soak.sh: the sink did not get all $TOTAL messages:" >&2; cat "$W/sink.out" >&2; exit 1; }
sample $(( $(date +%s) - start )) >> "$OUT.csv"

gnuplot <<PLOT
set terminal pngcairo size 1200,900 font ",10"
set output "$OUT.png"
set datafile separator ","
set multiplot layout 2,2 title "smarthost soak: $TOTAL messages at $RATE msg/s, RSA-2048 + Ed25519 (scripts/soak.sh)"
set xlabel "minutes"
set key off
set yrange [0:*]
set title "RSS (MiB)";     plot "$OUT.csv" using (\$1/60):(\$2/1024) every ::1 with lines lw 2
set title "goroutines";    plot "$OUT.csv" using (\$1/60):3 every ::1 with lines lw 2
set title "open files";    plot "$OUT.csv" using (\$1/60):4 every ::1 with lines lw 2
set title "queue length";  plot "$OUT.csv" using (\$1/60):5 every ::1 with lines lw 2
unset multiplot
PLOT
echo "soak.sh: first and last samples (seconds, RSS KiB, goroutines, open files, queue):" >&2
sed -n 2p "$OUT.csv" >&2; tail -1 "$OUT.csv" >&2
echo "soak.sh: plot in $OUT.png" >&2
