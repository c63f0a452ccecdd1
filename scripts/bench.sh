#!/usr/bin/env bash
# End-to-end throughput: the load tool submits, the relay queues and
# forwards, a counting sink receives; the figure is N / (first connection to
# last message received upstream). One line per run.
#
#   scripts/bench.sh [--vs-postfix | --vs-peers] [--openssl] [--runs 3] [--total 5000] [--sessions 20] [--size 10240]
#                    [--latency "150 400"] [--latency-total 3000] [--large] [--many 10000] [--history]
#   scripts/bench.sh --wan [--wan-delay 10ms] [--baseline REF] [--runs 3]
#
# --baseline REF also builds git REF (a branch, a tag, a commit) and runs it
# beside this tree in the same sitting: M=0 without DKIM and with both
# signatures (with --vs-peers too), and in the WAN profile.
#
# --wan measures the upstream leg across a 20 ms round trip instead, in a
# network namespace of its own: smarthost with and without pipelining and
# BDAT, the build of git REF (--baseline), and Postfix, with the upstream's
# max_connections 1 and 8 (scripts/bench-wan.sh says how). Needs root.
#
# --vs-peers puts the peers in the same sitting: both smarthost builds
# (pure Go and the OpenSSL variant), Postfix (+ 2 OpenDKIM), maddy
# v0.8.1 (built once per machine from the Go module proxy, with the
# replace lines of its own go.mod) and mox v0.0.17 (built once per machine
# too; scripts/bench-mox.sh says how it runs and what limits it), each
# without DKIM and with RSA-2048 + Ed25519, interleaved run by run; then
# M=1 for smarthost and Postfix. mox allows one client IP 30 open and 300
# new connections a minute: it runs in the M=0 profiles only, where every
# peer gets one connection per session, and is left out with more than 30
# sessions. It prints medians, ratios and a chart. maddy runs with STARTTLS and AUTH
# PLAIN like smarthost, one bcrypt user allowed to send only as its
# address, two modify.dkim blocks, target.smtp to the sink, and no limits
# block. What makes its row unfair, in its favour or not: it fsyncs three
# files per message, opens a new upstream connection per message, and its
# queue delivers at most 16 at a time.
#
# --history adds, per run, the M=0 profiles (without DKIM and with both
# signatures) with the delivery history off (history.enabled: false),
# right after the same profile with it on (the default), and prints the
# ratios: what writing the history costs the submit path.
#
# --large adds, per run, 1 MiB (200 messages) and 10 MiB (30 messages)
# bodies with both signatures, smarthost against Postfix + 2 OpenDKIM, in
# MB/s, with smarthost's peak RSS (VmHWM).
#
# --many N adds, per run, N concurrent sessions submitting two messages
# each with both signatures (smarthost only: Postfix's process limit is
# 100 here); it prints msg/s, the p99 of a message and the peak RSS.
#
# --shaping measures the cost of upstream shaping when no limit is
# reached: smarthost alone, M=0 without DKIM, without upstream limits and
# with limits far above the load (1,000,000 messages and recipients a
# second, 20 connections: every transaction is admitted by the budget and
# every session takes a lease), alternating run by run; it prints both
# medians and their ratio. BENCH_REDIS=host:port keeps the user limits and
# the budgets in that Redis instead of memory, in both.
#
# --latency RATES adds a latency profile per rate: the same sessions, M=0,
# both DKIM signatures, but an open load (smtpload --rate) that offers RATE
# messages/s whatever the answers, with each message's latency counted
# from when it was due. It prints the p50 and p99 (medians over the runs);
# with --vs-postfix Postfix + 2 OpenDKIM runs the same schedule.
#
# smarthost is the release binary (scripts/build.sh: static, pure Go);
# --openssl measures the opt-in variant whose RSA signatures come from a
# static libcrypto instead.
#
# Profiles per run: M=0 without DKIM, with an RSA-2048 signature, and with
# RSA-2048 + Ed25519; M=1 (a connection per message) without DKIM.
#
# --vs-postfix also runs Debian's Postfix (private config and queue, relayhost
# to the same sink) without OpenDKIM, with one milter (RSA-2048) and with two
# chained (RSA-2048, then Ed25519: one OpenDKIM 2.11 cannot sign twice),
# alternating with smarthost run by run, and prints medians and ratios. Postfix is measured
# without AUTH (it has no SASL backend configured); smarthost always uses
# STARTTLS + AUTH. Needs root for Postfix. Writes results and a chart under
# $BENCH_DIR (default /var/lib/smarthost-bench: OpenDKIM refuses keys below
# world-writable folders such as /tmp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

HISTORY=0 VS=0 PEERS=0 RUNS=3 TOTAL=5000 SESSIONS=20 SIZE=10240 BUILD=pure-go RATES= LTOTAL=3000 LARGE=0 MANY=0
SHAPING=0 WAN=0 WAN_DELAY=10ms WAN_SESSIONS=64 BASELINE= WAN_PIDS=()
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --vs-postfix) VS=1 ;;
    --vs-peers) VS=1 PEERS=1 ;;
    --pure-go) BUILD=pure-go ;; # the default; kept for older notes
    --openssl) BUILD=openssl ;;
    --runs) RUNS=$2; shift ;;
    --total) TOTAL=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --latency) RATES=$2; shift ;;
    --latency-total) LTOTAL=$2; shift ;;
    --large) LARGE=1 ;;
    --shaping) SHAPING=1 ;;
    --history) HISTORY=1 ;;
    --many) MANY=$2; shift ;;
    --wan) WAN=1 VS=1 ;;
    --wan-delay) WAN_DELAY=$2; shift ;;
    --baseline) BASELINE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

W=${BENCH_DIR:-/var/lib/smarthost-bench}
SINK_PORT=3525 RELAY_PORT=3587 PF_PORT=4587 MADDY_PORT=5587
SH=$W/bin/smarthost LOAD=$W/bin/smtpload
# Peers built from the module proxy, once per machine, by version.
BENCH_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test
MOX_PEER=$PEERS
if [ $PEERS = 1 ] && [ "$SESSIONS" -gt 30 ]; then
  echo "bench.sh: mox is left out: it allows one client IP 30 open connections, and --sessions is $SESSIONS" >&2
  MOX_PEER=0
fi
. scripts/bench-wan.sh
. scripts/bench-mox.sh
if [ -z "${BENCH_NETNS:-}" ]; then # inside the WAN namespace, all is built
rm -rf "$W"; mkdir -p "$W/bin" "$W/dkim"
# What a fresh Debian machine lacks, in one apt-get (its package lists
# first: a new machine has none).
need=()
if [ $BUILD = openssl ] || [ $PEERS = 1 ]; then
  [ -e /usr/include/openssl/evp.h ] || need+=(libssl-dev)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
fi
if [ $VS = 1 ]; then
  [ -x /usr/sbin/postfix ] || need+=(postfix)
  [ -x /usr/sbin/opendkim ] || need+=(opendkim opendkim-tools)
  command -v gnuplot >/dev/null || need+=(gnuplot-nox)
  command -v openssl >/dev/null || need+=(openssl)
  command -v pkill >/dev/null || need+=(procps)
fi
[ $MOX_PEER = 1 ] && ! command -v mount >/dev/null && need+=(mount)
[ $WAN = 1 ] && ! command -v tc >/dev/null && need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/build.sh -o "$W/bin/smarthost" $([ $BUILD = openssl ] && echo --openssl) >/dev/null
go build -o "$W/bin/smtpload" ./cmd/smtpload
if [ -n "$BASELINE" ]; then
  mkdir -p "$W/base-src" && git archive "$BASELINE" | tar -x -C "$W/base-src"
  (cd "$W/base-src" && COMMIT=$(git -C "$OLDPWD" rev-parse "$BASELINE") scripts/build.sh -o "$W/bin/smarthost-base" >/dev/null)
fi
if [ $PEERS = 1 ]; then
  scripts/build.sh --openssl -o "$W/bin/smarthost-openssl" >/dev/null
  # maddy v0.8.1: the proxy serves it but lists no versions, so neither
  # `go install …@v0.8.1` nor `go get …@latest` works, and its go.mod
  # replaces go-smtp, go-imap and libdns-gandi with forks, which only a
  # module of our own can repeat. Built once per machine.
  MADDY_DIR=$BENCH_CACHE/maddy-v0.8.1
  if [ ! -x "$MADDY_DIR/maddy" ]; then
    echo "bench.sh: building maddy v0.8.1 (once)" >&2
    m=$(mktemp -d)
    ( cd "$m" && export GOFLAGS=-mod=mod && go mod init maddybuild >/dev/null 2>&1 &&
      go get -tool github.com/foxcpp/maddy/cmd/maddy@v0.8.1 >/dev/null 2>&1 &&
      go mod edit -replace github.com/emersion/go-imap=github.com/foxcpp/go-imap@v1.0.0-beta.1.0.20220623182312-df940c324887 \
        -replace github.com/emersion/go-smtp=github.com/foxcpp/go-smtp@v1.21.4-0.20250124171104-c8519ae4fb23 \
        -replace github.com/libdns/gandi=github.com/foxcpp/libdns-gandi@v1.0.4-0.20240127130558-4782f9d5ce3e &&
      go mod tidy >/dev/null 2>&1 &&
      GOBIN="$MADDY_DIR" go install github.com/foxcpp/maddy/cmd/maddy )
    rm -rf "$m"
  fi
  MADDY=$MADDY_DIR/maddy
  [ $MOX_PEER = 0 ] || mox_build
fi
[ $WAN = 1 ] && wan_enter "${ARGS[@]}"
fi

echo "bench-pw" | $SH passwd > "$W/hash"
printf 'users:\n  bench:\n    password_hash: "%s"\n    addresses: ["*@example.com"]\n' "$(cat "$W/hash")" > "$W/users.yaml"
$SH dkim keygen --domain example.com --selector rsa --algo rsa2048 --out "$W/dkim" > "$W/dkim/rsa.dns"
$SH dkim keygen --domain example.com --selector ed --algo ed25519 --out "$W/dkim" > "$W/dkim/ed.dns"

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

relay_config() { # dkim: none|rsa|both
  local dkim=""
  if [ "$1" != none ]; then
    dkim="dkim:
  domains:
    example.com:
      - {selector: rsa, key_file: $W/dkim/example.com.rsa.key}"
    [ "$1" = both ] && dkim="$dkim
      - {selector: ed, key_file: $W/dkim/example.com.ed.key}"
  fi
  cat > "$W/relay.yaml" <<CONF
hostname: smarthost-bench.test
listeners: [{address: "127.0.0.1:$RELAY_PORT", mode: starttls}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: $W/users.yaml}}
policy: {max_recipients: 100, max_message_size: 25MiB}
ratelimit: {$([ -n "${BENCH_REDIS:-}" ] && echo "backend: redis, redis: {addrs: [\"$BENCH_REDIS\"]}" || echo "backend: memory"), connections_per_ip: 15000, max_connections: 15000}
$dkim
upstreams: [{name: sink, url: "smtp://127.0.0.1:${UP_PORT:-$SINK_PORT}", tls: none, max_connections: ${UP_CONNS:-20}${UP_EXTRA:-}}]
queue: {dir: $W/queue, workers: 20}
${HIST:+history: {enabled: $HIST\}}
log: {format: text, level: warn}
CONF
}

# sink_end FILE: when the sink received its last message (seconds), from
# its own clock, so that its shutdown is not counted.
sink_end() { awk '/last at/ { printf "%.6f", $(NF-2) / 1e9 }' "$1"; }

# measure NAME PORT LOADFLAGS...: sink + load, prints "NAME msg/s" and the load's line.
measure() {
  local name=$1 port=$2; shift 2
  # Start from clean disks: neither system should pay for writing back what
  # the other left dirty (ext4 commits it with the next fsync).
  sync
  $LOAD sink --listen "127.0.0.1:$SINK_PORT" --expect "$TOTAL" > "$W/sink.out" 2>&1 &
  local sink=$!
  wait_port $SINK_PORT
  local start end
  start=$(date +%s.%N)
  local out
  out=$($LOAD run --addr "127.0.0.1:$(wan_port "$port")" --sessions "$SESSIONS" --size "$SIZE" --total "$TOTAL" --from load@example.com "$@")
  # A peer that delivers one message at a time (mox) may need minutes after
  # the load has ended; one that never gets there gets no figure.
  if ! timeout 900 tail --pid=$sink -f /dev/null; then
    kill $sink; wait $sink 2>/dev/null || true
    printf '%-34s no figure: the sink had %s of %s messages 15 minutes after the load | %s\n' \
      "$name" "$(sed -n 's/.*received \([0-9]*\) messages.*/\1/p' "$W/sink.out")" "$TOTAL" "$out"
    return 0
  fi
  end=$(sink_end "$W/sink.out")
  local rate
  rate=$(awk -v n="$TOTAL" -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", n / (e - s) }')
  echo "$name $rate" >> "$W/results"
  echo "${name}_p99 $(ms "$(sed -n 's/.*; message p50 [^ ]* p99 \([^ ]*\).*/\1/p' <<< "$out")")" >> "$W/results"
  printf '%-34s %8s msg/s end to end | %s\n' "$name" "$rate" "$out"
}

# ms DURATION: a Go duration as smtpload prints it (850µs, 3.2ms, 1.5s) in ms.
ms() {
  awk -v d="$1" 'BEGIN {
    f["h"] = 3600000; f["m"] = 60000; f["s"] = 1000; f["ms"] = 1; f["µs"] = 0.001; f["ns"] = 0.000001
    t = 0
    while (match(d, /^[0-9.]+(h|ms|m|µs|ns|s)/)) {
      part = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
      match(part, /^[0-9.]+/); t += substr(part, 1, RLENGTH) * f[substr(part, RLENGTH + 1)]
    }
    printf "%.2f", t
  }'
}

# measure_latency NAME PORT RATE LOADFLAGS...: an open load at RATE msg/s;
# records "NAME_p50 ms" and "NAME_p99 ms" of the latency from when due.
measure_latency() {
  local name=$1 port=$2 rate=$3; shift 3
  sync
  $LOAD sink --listen "127.0.0.1:$SINK_PORT" --expect "$LTOTAL" > "$W/sink.out" 2>&1 &
  local sink=$!
  wait_port $SINK_PORT
  local out p50 p99
  out=$($LOAD run --addr "127.0.0.1:$port" --sessions "$SESSIONS" --size "$SIZE" --total "$LTOTAL" --rate "$rate" --from load@example.com "$@")
  if ! timeout 300 tail --pid=$sink -f /dev/null; then kill $sink; fi
  p50=$(ms "$(sed -n 's/.*when due p50 \([^ ]*\) p99.*/\1/p' <<< "$out")")
  p99=$(ms "$(sed -n 's/.*when due p50 [^ ]* p99 \([^ ]*\).*/\1/p' <<< "$out")")
  printf '%s_p50 %s\n%s_p99 %s\n' "$name" "$p50" "$name" "$p99" >> "$W/results"
  printf '%-34s p50 %7s ms  p99 %7s ms | %s\n' "$name" "$p50" "$p99" "$out"
}

run_smarthost() { # name dkim perSession [rate]; SHBIN picks another build
  relay_config "$2"
  rm -rf "$W/queue"
  ${SHBIN:-$SH} serve --config "$W/relay.yaml" 2> "$W/relay.log" &
  local pid=$!
  wait_port $RELAY_PORT
  if [ -n "${4:-}" ]; then
    measure_latency "$1" $RELAY_PORT "$4" --starttls --user bench --pass bench-pw --per-session "$3"
    kill $pid; wait $pid 2>/dev/null || true
    return
  fi
  local t0; t0=$(ticks $pid)
  measure "$1" $RELAY_PORT --starttls --user bench --pass bench-pw --per-session "$3" ${LOADX:-}
  echo "${1}_rss $(awk '/^VmHWM:/ { print $2 }' /proc/$pid/status)" >> "$W/results"
  # CPU the relay itself spent per message (user + system), for the budget
  # in docs/benchmarks.md.
  awk -v t="$(( $(ticks $pid) - t0 ))" -v hz="$(getconf CLK_TCK)" -v n="$TOTAL" \
    'BEGIN { printf "%-34s %8.2f ms of relay CPU per message\n", "", t / hz * 1000 / n }'
  kill $pid; wait $pid 2>/dev/null || true
}

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

maddy_setup() { # dkim: none|both
  local D=$W/maddy
  rm -rf "$D"; mkdir -p "$D/state" "$D/run" "$D/keys"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$D/key.pem" -out "$D/cert.pem" 2>/dev/null
  cp "$W/dkim/example.com.rsa.key" "$D/keys/example.com-rsa.key"
  cp "$W/dkim/example.com.ed.key" "$D/keys/example.com-ed.key"
  echo "load@example.com: $($MADDY hash --password bench-pw | tail -1)" > "$D/passwd"
  local modify=""
  if [ "$1" = both ]; then
    # maddy's config has no statement separator: one directive per line.
    modify="modify {
                dkim example.com rsa {
                    key_path $D/keys/{domain}-{selector}.key
                    newkey_algo rsa2048
                }
                dkim example.com ed {
                    key_path $D/keys/{domain}-{selector}.key
                    newkey_algo ed25519
                }
            }"
  fi
  cat > "$D/maddy.conf" <<CONF
state_dir $D/state
runtime_dir $D/run
hostname maddy-bench.test
tls file $D/cert.pem $D/key.pem
log off
auth.pass_table local_authdb { table file $D/passwd }
target.smtp sink_out {
    targets tcp://127.0.0.1:$SINK_PORT
    attempt_starttls no
}
target.queue outbound {
    target &sink_out
}
submission tcp://127.0.0.1:$MADDY_PORT {
    auth &local_authdb
    source example.com {
        check {
            authorize_sender {
                user_to_email identity
            }
        }
        default_destination {
            $modify
            deliver_to &outbound
        }
    }
    default_source {
        reject 501 5.1.8 "Non-local sender domain"
    }
}
CONF
}

run_maddy() { # name dkim
  maddy_setup "$2"
  $MADDY -config "$W/maddy/maddy.conf" run 2> "$W/maddy/maddy.log" &
  local pid=$!
  wait_port $MADDY_PORT
  measure "$1" $MADDY_PORT --starttls --user load@example.com --pass bench-pw --per-session 0
  kill $pid; wait $pid 2>/dev/null || true
}

postfix_setup() { # milters: none|rsa|both ; tls: yes|no
  local P=$W/pf
  [ -d $P/conf ] && postfix -c $P/conf stop >/dev/null 2>&1 || true
  pkill -f "opendkim -x $W" 2>/dev/null || true
  rm -rf $P; mkdir -p $P/conf $P/data $P/queue $P/milter
  cp /etc/postfix/master.cf $P/conf/
  sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PF_PORT inet n - n - - smtpd/" $P/conf/master.cf
  local milters=""
  if [ "$1" != none ]; then
    # OpenDKIM wants its keys in a folder only its user can write.
    mkdir -p $P/keys && cp "$W/dkim"/*.key $P/keys/
    chown -R postfix:postfix $P/milter $P/keys && chmod 700 $P/keys && chmod 600 $P/keys/*
    for sel in rsa ed; do
      [ "$1" = rsa ] && [ $sel = ed ] && continue
      local algo=rsa-sha256; [ $sel = ed ] && algo=ed25519-sha256
      cat > $P/milter/$sel.conf <<CONF
Syslog no
Mode s
Domain example.com
Selector $sel
KeyFile $P/keys/example.com.$sel.key
SignatureAlgorithm $algo
Canonicalization relaxed/relaxed
Socket local:$P/milter/$sel.sock
UserID postfix
UMask 007
PidFile $P/milter/$sel.pid
CONF
      opendkim -x $P/milter/$sel.conf
      milters="$milters unix:$P/milter/$sel.sock"
    done
    for _ in $(seq 1 100); do [ -S $P/milter/rsa.sock ] && break; sleep 0.05; done
  fi
  local tls="smtpd_tls_security_level = none"
  if [ "$2" = yes ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
      -keyout $P/conf/key.pem -out $P/conf/cert.pem 2>/dev/null
    tls="smtpd_tls_security_level = may
smtpd_tls_chain_files = $P/conf/key.pem, $P/conf/cert.pem"
  fi
  cat > $P/conf/main.cf <<CONF
compatibility_level = 3.6
queue_directory = $P/queue
data_directory = $P/data
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix-bench.test
mydestination =
relayhost = [127.0.0.1]:${UP_PORT:-$SINK_PORT}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = $P/maillog
smtp_tls_security_level = none
$tls
smtp_destination_concurrency_limit = ${UP_CONNS:-20}
message_size_limit = 52428800
default_process_limit = 100
smtpd_milters =$milters
milter_default_action = tempfail
CONF
  chown -R postfix $P/data
  postfix -c $P/conf start >/dev/null 2>&1
  wait_port $PF_PORT
}

run_postfix() { # name milters perSession tls [rate]
  postfix_setup "$2" "$4"
  local flags=(--per-session "$3")
  [ "$4" = yes ] && flags+=(--starttls)
  if [ -n "${5:-}" ]; then
    measure_latency "$1" $PF_PORT "$5" "${flags[@]}"
  else
    measure "$1" $PF_PORT "${flags[@]}"
  fi
  postfix -c $W/pf/conf stop >/dev/null 2>&1 || true
  pkill -f "opendkim -x $W" 2>/dev/null || true
  sleep 0.5
}

run_ceiling() {
  sync
  $LOAD sink --listen "127.0.0.1:$((SINK_PORT+1))" --expect "$TOTAL" > "$W/sink.out" 2>&1 &
  local sink=$!
  wait_port $((SINK_PORT+1))
  local start end out
  start=$(date +%s.%N)
  out=$($LOAD run --addr "127.0.0.1:$((SINK_PORT+1))" --sessions "$SESSIONS" --size "$SIZE" --total "$TOTAL")
  wait $sink || true
  end=$(sink_end "$W/sink.out")
  local rate; rate=$(awk -v n="$TOTAL" -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", n / (e - s) }')
  echo "ceiling $rate" >> "$W/results"
  printf '%-34s %8s msg/s | %s\n' "ceiling (load straight into sink)" "$rate" "$out"
}

# extras: the --large and --many profiles of one run.
extras() {
  if [ $LARGE = 1 ]; then
    local sz
    for sz in 1048576:200 10485760:30; do
      SIZE=${sz%:*} TOTAL=${sz#*:} run_smarthost "smarthost_dkim2_${sz%:*}B" both 0
      SIZE=${sz%:*} TOTAL=${sz#*:} run_postfix "postfix_opendkim2_${sz%:*}B" both 0 no
    done
  fi
  if [ "$MANY" -gt 0 ]; then
    SESSIONS=$MANY TOTAL=$((2 * MANY)) run_smarthost smarthost_many_dkim2 both 0
  fi
}

[ $WAN = 1 ] && TOTAL="250 per upstream connection" SIZE=$SIZE SESSIONS=$WAN_SESSIONS
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $TOTAL messages of $SIZE bytes, $SESSIONS sessions; $($SH version | tail -1)"
: > "$W/results"
for r in $(seq 1 "$RUNS"); do
  if [ $WAN = 1 ]; then wan_run; continue; fi
  if [ $SHAPING = 1 ]; then
    run_smarthost smarthost_M0 none 0
    UP_EXTRA=', limits: {messages: "1000000/s", recipients: "1000000/s", connections: 20}' run_smarthost smarthost_M0_shaped none 0
    continue
  fi
  run_ceiling
  if [ $PEERS = 1 ]; then
    run_smarthost smarthost_M0 none 0
    [ -n "$BASELINE" ] && SHBIN=$W/bin/smarthost-base run_smarthost baseline_M0 none 0
    SHBIN=$W/bin/smarthost-openssl run_smarthost smarthost_openssl_M0 none 0
    run_postfix postfix_M0 none 0 no
    run_maddy maddy_M0 none
    [ $MOX_PEER = 0 ] || run_mox mox_M0 none
    run_smarthost smarthost_M0_dkim2 both 0
    [ -n "$BASELINE" ] && SHBIN=$W/bin/smarthost-base run_smarthost baseline_M0_dkim2 both 0
    SHBIN=$W/bin/smarthost-openssl run_smarthost smarthost_openssl_M0_dkim2 both 0
    run_postfix postfix_M0_opendkim2 both 0 no
    run_maddy maddy_M0_dkim2 both
    [ $MOX_PEER = 0 ] || run_mox mox_M0_dkim2 both
    run_smarthost smarthost_M1 none 1
    LOADX=--resume=false run_smarthost smarthost_M1_noresume none 1
    run_postfix postfix_M1_starttls none 1 yes
    extras
    continue
  fi
  run_smarthost smarthost_M0 none 0
  [ $HISTORY = 1 ] && HIST=false run_smarthost smarthost_M0_nohistory none 0
  [ -n "$BASELINE" ] && SHBIN=$W/bin/smarthost-base run_smarthost baseline_M0 none 0
  [ $VS = 1 ] && run_postfix postfix_M0 none 0 no
  run_smarthost smarthost_M0_rsa rsa 0
  [ $VS = 1 ] && run_postfix postfix_M0_opendkim_rsa rsa 0 no
  run_smarthost smarthost_M0_dkim2 both 0
  [ $HISTORY = 1 ] && HIST=false run_smarthost smarthost_M0_dkim2_nohistory both 0
  [ -n "$BASELINE" ] && SHBIN=$W/bin/smarthost-base run_smarthost baseline_M0_dkim2 both 0
  [ $VS = 1 ] && run_postfix postfix_M0_opendkim2 both 0 no
  run_smarthost smarthost_M1 none 1
  [ $VS = 1 ] && run_postfix postfix_M1_starttls none 1 yes
  extras
  for rate in $RATES; do
    run_smarthost "smarthost_dkim2_at_$rate" both 0 "$rate"
    [ $VS = 1 ] && run_postfix "postfix_opendkim2_at_$rate" both 0 no "$rate"
  done
done

# histogram PNG: gnuplot draws the script on stdin as grouped bars into PNG.
histogram() {
  { printf 'set terminal png size 900,450 noenhanced\nset output "%s"\n' "$1"
    printf 'set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n'
    cat; } | gnuplot 2>/dev/null
}
median() { { grep "^$1 " "$W/results" || true; } | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
if [ $WAN = 1 ]; then wan_report; exit 0; fi
echo "# medians of $RUNS runs (msg/s)"
for n in ceiling smarthost_M0 smarthost_M0_nohistory smarthost_M0_shaped baseline_M0 smarthost_openssl_M0 smarthost_M0_rsa smarthost_M0_dkim2 smarthost_M0_dkim2_nohistory baseline_M0_dkim2 smarthost_openssl_M0_dkim2 smarthost_M1 \
         smarthost_M1_noresume postfix_M0 postfix_M0_opendkim_rsa postfix_M0_opendkim2 postfix_M1_starttls maddy_M0 maddy_M0_dkim2 mox_M0 mox_M0_dkim2; do
  m=$(median $n); [ "$m" = 0 ] || printf '%-24s %8s\n' $n "$m" | tee -a "$W/medians"
done
if [ $HISTORY = 1 ]; then
  echo "# with history / without (same run): no DKIM $(ratio smarthost_M0 smarthost_M0_nohistory), 2 signatures $(ratio smarthost_M0_dkim2 smarthost_M0_dkim2_nohistory); p99 no DKIM $(median smarthost_M0_p99) / $(median smarthost_M0_nohistory_p99) ms" |
    tee -a "$W/medians"
fi
if [ -n "$BASELINE" ]; then
  echo "# this build / $BASELINE (same run): no DKIM $(ratio smarthost_M0 baseline_M0), 2 signatures $(ratio smarthost_M0_dkim2 baseline_M0_dkim2)" |
    tee -a "$W/medians"
fi
if [ $SHAPING = 1 ]; then
  echo "# shaping on (no limit reached) / off, same run: $(ratio smarthost_M0_shaped smarthost_M0)" | tee -a "$W/medians"
fi
if [ $LARGE = 1 ]; then
  echo "# large messages, both signatures: medians of $RUNS runs"
  for b in 1048576 10485760; do
    for n in smarthost_dkim2_${b}B postfix_opendkim2_${b}B; do
      printf '%-30s %8s MB/s  p99 %8s ms' $n "$(awk -v r="$(median $n)" -v b=$b 'BEGIN { printf "%.1f", r * b / 1e6 }')" "$(median ${n}_p99)"
      case $n in smarthost*) printf '  peak RSS %s MiB' "$(( $(median ${n}_rss) / 1024 ))" ;; esac
      echo
    done | tee -a "$W/medians"
  done
fi
if [ "$MANY" -gt 0 ]; then
  printf '# %s concurrent sessions, both signatures: %s msg/s, p99 %s ms, peak RSS %s MiB (medians of %s runs)\n' \
    "$MANY" "$(median smarthost_many_dkim2)" "$(median smarthost_many_dkim2_p99)" "$(( $(median smarthost_many_dkim2_rss) / 1024 ))" "$RUNS" |
    tee -a "$W/medians"
fi
if [ -n "$RATES" ]; then
  echo "# latency from when due, $SESSIONS sessions, M=0, both signatures: medians of $RUNS runs (ms)"
  for rate in $RATES; do
    for n in smarthost_dkim2_at_$rate postfix_opendkim2_at_$rate; do
      grep -q "^${n}_p99 " "$W/results" || continue
      printf '%-30s p50 %7s  p99 %7s\n' "$n" "$(median "${n}_p50")" "$(median "${n}_p99")" | tee -a "$W/medians"
    done
  done
  if [ $VS = 1 ] && command -v gnuplot >/dev/null; then
    # p99 per offered rate, smarthost beside Postfix, on a log scale: at a
    # rate Postfix cannot sustain its latency is seconds, ours milliseconds.
    for rate in $RATES; do
      echo "\"$rate msg/s\" $(median "smarthost_dkim2_at_${rate}_p99") $(median "postfix_opendkim2_at_${rate}_p99")"
    done > "$W/latency.dat"
    histogram "$W/latency.png" <<PLOT && echo "# latency chart: $W/latency.png"
set logscale y
set ylabel "p99 ms from when due (log scale)"
set title "p99 at a fixed offered load, $SESSIONS sessions, M=0, RSA + Ed25519, median of $RUNS"
set key top left
set yrange [1:*]
set xrange [-0.6:*]
set grid ytics
set arrow from graph 0, first 20 to graph 1, first 20 nohead dashtype 2
set label "20 ms" at graph 0.01, first 23
plot "$W/latency.dat" using 2:xtic(1) title "smarthost ($BUILD build)", \
     "" using 3 title "Postfix + 2 OpenDKIM", \
     "" using (\$0 - 0.17):2:(sprintf("%.1f", \$2)) with labels offset 0,1 notitle, \
     "" using (\$0 + 0.17):3:(sprintf("%.0f", \$3)) with labels offset 0,1 notitle
PLOT
  fi
fi
if [ $VS = 1 ]; then
  echo "# ratios (same run)"
  echo "smarthost / postfix, no DKIM, M=0:                       $(ratio smarthost_M0 postfix_M0)"
  [ $PEERS = 1 ] || echo "smarthost / postfix + OpenDKIM milter, RSA-2048:        $(ratio smarthost_M0_rsa postfix_M0_opendkim_rsa)"
  echo "smarthost / postfix + 2 OpenDKIM milters, 2 signatures: $(ratio smarthost_M0_dkim2 postfix_M0_opendkim2)"
  echo "smarthost / postfix with STARTTLS, new connection each:  $(ratio smarthost_M1 postfix_M1_starttls)"
  if [ $PEERS = 0 ] && command -v gnuplot >/dev/null; then
    # One group per profile, smarthost beside Postfix, the ratio on top.
    {
      echo '"M=0, no DKIM"' "$(median smarthost_M0) $(median postfix_M0)"
      echo '"M=0, RSA-2048"' "$(median smarthost_M0_rsa) $(median postfix_M0_opendkim_rsa)"
      echo '"M=0, RSA + Ed25519"' "$(median smarthost_M0_dkim2) $(median postfix_M0_opendkim2)"
      echo '"M=1, no DKIM"' "$(median smarthost_M1) $(median postfix_M1_starttls)"
    } > "$W/chart.dat"
    histogram "$W/bench.png" <<PLOT && echo "# chart: $W/bench.png"
set ylabel "messages/s, end to end"
set title "smarthost, $BUILD build (STARTTLS + AUTH) vs Postfix 3.7 (+ OpenDKIM)\n$TOTAL x $SIZE B, $SESSIONS sessions, median of $RUNS"
set key top right
set yrange [0:*]
set xrange [-0.6:3.6]
set offsets 0, 0, graph 0.12, 0
set grid ytics
plot "$W/chart.dat" using 2:xtic(1) title "smarthost", \
     "" using 3 title "Postfix", \
     "" using (\$0 - 0.17):2:(sprintf("%.2fx", \$2 / \$3)) with labels offset 0,1 notitle
PLOT
  fi
fi
if [ $PEERS = 1 ]; then
  echo "# peers (same run)"
  echo "pure Go, 2 signatures / postfix + 2 OpenDKIM:    $(ratio smarthost_M0_dkim2 postfix_M0_opendkim2)"
  echo "pure Go, 2 signatures / maddy, 2 signatures:      $(ratio smarthost_M0_dkim2 maddy_M0_dkim2)"
  echo "OpenSSL, 2 signatures / postfix + 2 OpenDKIM:    $(ratio smarthost_openssl_M0_dkim2 postfix_M0_opendkim2)"
  echo "OpenSSL, 2 signatures / maddy, 2 signatures:      $(ratio smarthost_openssl_M0_dkim2 maddy_M0_dkim2)"
  echo "pure Go, no DKIM / maddy, no DKIM:                $(ratio smarthost_M0 maddy_M0)"
  if [ $MOX_PEER = 1 ]; then
    echo "pure Go, 2 signatures / mox, 2 signatures:        $(ratio smarthost_M0_dkim2 mox_M0_dkim2)"
    echo "OpenSSL, 2 signatures / mox, 2 signatures:        $(ratio smarthost_openssl_M0_dkim2 mox_M0_dkim2)"
    echo "pure Go, no DKIM / mox, no DKIM:                  $(ratio smarthost_M0 mox_M0)"
  fi
  echo "pure Go, no DKIM / ceiling (load into the sink):  $(ratio smarthost_M0 ceiling)"
  echo "pure Go, M=1 / postfix M=1 with STARTTLS:         $(ratio smarthost_M1 postfix_M1_starttls)"
  echo "pure Go, M=1 not resuming / postfix M=1:          $(ratio smarthost_M1_noresume postfix_M1_starttls)"
  if command -v gnuplot >/dev/null; then
    {
      echo '"no DKIM"' "$(median smarthost_M0) $(median smarthost_openssl_M0) $(median postfix_M0) $(median maddy_M0) $(median mox_M0)"
      echo '"RSA-2048 + Ed25519"' "$(median smarthost_M0_dkim2) $(median smarthost_openssl_M0_dkim2) $(median postfix_M0_opendkim2) $(median maddy_M0_dkim2) $(median mox_M0_dkim2)"
    } > "$W/peers.dat"
    # Bars of a group sit 1/(bars + 1) apart around its centre.
    if [ $MOX_PEER = 1 ]; then
      peers="smarthost, maddy 0.8.1, mox 0.0.17 (STARTTLS + AUTH) vs Postfix 3.7 (+ 2 OpenDKIM, plain)" bars=5
      mox_bar=', "" using 6 title "mox", "" using ($0 + 2/6.):6:(sprintf("%.0f", $6)) with labels offset 0,1 notitle'
    else
      peers="smarthost (STARTTLS + AUTH) vs Postfix 3.7 (+ 2 OpenDKIM, plain) vs maddy 0.8.1 (STARTTLS + AUTH)" bars=4 mox_bar=
    fi
    histogram "$W/peers.png" <<PLOT && echo "# peers chart: $W/peers.png"
set ylabel "messages/s, end to end"
set title "$peers\n$TOTAL x $SIZE B, $SESSIONS sessions, median of $RUNS"
set key below
set yrange [0:*]
set xrange [-0.6:1.6]
set grid ytics
plot "$W/peers.dat" using 2:xtic(1) title "smarthost, pure Go (default)", \
     "" using 3 title "smarthost, OpenSSL variant", \
     "" using 4 title "Postfix", \
     "" using 5 title "maddy", \
     "" using (\$0 - ($bars - 1) / 2. / ($bars + 1)):2:(sprintf("%.0f", \$2)) with labels offset 0,1 notitle, \
     "" using (\$0 + (3 - ($bars - 1) / 2.) / ($bars + 1)):5:(sprintf("%.0f", \$5)) with labels offset 0,1 notitle$mox_bar
PLOT
  fi
fi
