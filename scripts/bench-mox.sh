# mox as a peer in scripts/bench.sh --vs-peers, sourced by it.
#
# mox v0.0.17 (github.com/mjl-/mox) takes submissions with STARTTLS and
# AUTH PLAIN on $MOX_PORT for one account (load@example.com), signs with
# RSA-2048 and Ed25519 (two selectors, relaxed/relaxed, both in Sign) or
# not at all, and hands every message to a transport "sink": plain SMTP to
# the benchmark's sink, routed for all recipients. What a reader of its
# figures must know:
# - It looks its smarthost up by name at every delivery (an IP is not
#   accepted), so it runs in a private mount namespace (unshare -m) with a
#   hosts file of its own that names the sink sink.bench.test, and a
#   resolv.conf that points at 127.0.0.1, so that no lookup leaves the
#   machine.
# - Its queue sends one message at a time per recipient domain, over a new
#   connection each; the load sends every message to one domain.
# - It allows each client IP 300 new connections a minute and 30 open at
#   once. bench.sh keeps mox to the M=0 profiles (one connection per
#   session for every peer), and leaves it out with more than 30 sessions.
# - Each message it sends is counted for 24 hours against the account's
#   daily limits (raised here to 1,000,000 messages and first-time
#   recipients, from 1,000 and 200), so each run starts it with an empty
#   data folder.
# - It asks TLS clients for a certificate unless told not to; here it does
#   not (ClientAuthDisabled), as the other peers do not.
# - As root it binds its ports, then runs as an unprivileged user (nobody)
#   and owns its config and data folders, all under $W/mox.

MOX_VERSION=v0.0.17 MOX_PORT=6587

# mox_build: the mox binary, built once per machine. The module proxy
# serves v0.0.17 but not the version list that `go install …@v0.0.17` asks
# for first, so the module is downloaded by its exact version and then
# installed from the local module cache, with the proxy behind it for the
# dependencies.
mox_build() {
  local dir=$BENCH_CACHE/mox-$MOX_VERSION
  if [ ! -x "$dir/mox" ]; then
    echo "bench.sh: building mox $MOX_VERSION (once)" >&2
    local m; m=$(mktemp -d)
    ( cd "$m" && go mod download "github.com/mjl-/mox@$MOX_VERSION" &&
      GOBIN="$dir" GOPROXY="file://$(go env GOMODCACHE)/cache/download,$(go env GOPROXY)" \
        go install "github.com/mjl-/mox@$MOX_VERSION" )
    rm -rf "$m"
  fi
  # Where its unprivileged user can run it (not below root's home).
  cp "$dir/mox" "$W/bin/mox"
  MOX=$W/bin/mox
}

# mox_setup DKIM: a fresh run folder for mox, DKIM none|both. sconf wants
# tabs for indentation and one key per line.
mox_setup() {
  local D=$W/mox
  rm -rf "$D"; mkdir -p "$D/config" "$D/data"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$D/config/key.pem" -out "$D/config/cert.pem" 2>/dev/null
  cp "$W/dkim/example.com.rsa.key" "$D/config/dkim-rsa.key"
  cp "$W/dkim/example.com.ed.key" "$D/config/dkim-ed.key"
  printf '127.0.0.1 localhost\n127.0.0.1 sink.bench.test\n' > "$D/hosts"
  printf 'nameserver 127.0.0.1\n' > "$D/resolv.conf"
  sed 's/^ *|//' > "$D/config/mox.conf" <<CONF
    |DataDir: $D/data
    |LogLevel: error
    |User: nobody
    |Hostname: mox-bench.test
    |Listeners:
    |	bench:
    |		IPs:
    |			- 127.0.0.1
    |		TLS:
    |			KeyCerts:
    |				-
    |					CertFile: $D/config/cert.pem
    |					KeyFile: $D/config/key.pem
    |			ClientAuthDisabled: true
    |		Submission:
    |			Enabled: true
    |			Port: $MOX_PORT
    |Postmaster:
    |	Account: bench
    |	Mailbox: Inbox
    |Transports:
    |	sink:
    |		SMTP:
    |			Host: sink.bench.test
    |			Port: $SINK_PORT
    |			NoSTARTTLS: true
    |NoOutgoingDMARCReports: true
    |NoOutgoingTLSReports: true
CONF
  local dkim=""
  if [ "$1" = both ]; then
    dkim=$(sed 's/^ *|//' <<CONF
    |		DKIM:
    |			Selectors:
    |				rsa:
    |					Canonicalization:
    |						HeaderRelaxed: true
    |						BodyRelaxed: true
    |					PrivateKeyFile: $D/config/dkim-rsa.key
    |				ed:
    |					Canonicalization:
    |						HeaderRelaxed: true
    |						BodyRelaxed: true
    |					PrivateKeyFile: $D/config/dkim-ed.key
    |			Sign:
    |				- rsa
    |				- ed
CONF
)
  fi
  sed 's/^ *|//' > "$D/config/domains.conf" <<CONF
    |Domains:
    |	example.com:
    |		Description: the benchmark's sender domain
$dkim
    |Accounts:
    |	bench:
    |		Domain: example.com
    |		Destinations:
    |			load@example.com: nil
    |		MaxOutgoingMessagesPerDay: 1000000
    |		MaxFirstTimeRecipientsPerDay: 1000000
    |Routes:
    |	-
    |		Transport: sink
CONF
}

run_mox() { # name dkim
  mox_setup "$2"
  local D=$W/mox
  # From $D: as root, mox sets the owner and mode of its working folder.
  ( cd "$D" && exec unshare -m sh -c 'mount --bind "$1/hosts" /etc/hosts &&
      mount --bind "$1/resolv.conf" /etc/resolv.conf && exec "$2" -config "$1/config/mox.conf" serve' \
      sh "$D" "$MOX" ) > "$D/mox.log" 2>&1 &
  local pid=$!
  wait_port $MOX_PORT
  for _ in $(seq 1 200); do [ -S "$D/data/ctl" ] && break; sleep 0.05; done
  echo bench-pw | "$MOX" -config "$D/config/mox.conf" setaccountpassword bench > /dev/null
  measure "$1" $MOX_PORT --starttls --user load@example.com --pass bench-pw --per-session 0
  kill $pid; wait $pid 2>/dev/null || true
}
