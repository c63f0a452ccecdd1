#!/usr/bin/env bash
# Starts (or stops) a throwaway OpenLDAP slapd and redis-server on free
# loopback ports for the integration tests.
#
#   eval "$(scripts/test-services.sh start)"   # prints export lines
#   scripts/test-services.sh stop
#
# State lives in $SMARTHOST_TESTSVC_DIR: by default a new folder under
# ${TMPDIR:-/tmp} for each start, which start exports with the rest, so that
# two suites on one machine (two checkouts, a CI job beside a developer)
# never stop each other's services. Nothing under /etc is touched and no
# system service is used.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=${SMARTHOST_TESTSVC_DIR:-}
LDIF=$ROOT/testdata/ldap/test-users.ldif

say() { echo "test-services: $*" >&2; }

# A daemon reparented to PID 1 can linger as a zombie, which kill -0 still
# sees; read its state instead.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$(( 20000 + RANDOM % 12000 )) # below the ephemeral range, so no outgoing connection holds it
    port_busy "$p" || { echo "$p"; return 0; }
  done
  say "no free port found"; return 1
}

stop_pid() { # name pidfile
  local pf=$2 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # a test may have stopped it with SIGSTOP
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
    alive "$pid" && { say "$1 ignored TERM; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pf"
}

wait_for() { # what cmd...
  local what=$1; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  say "timed out waiting for $what"; return 1
}

stop() {
  stop_pid slapd "$D/slapd.pid"
  stop_pid redis "$D/redis.pid"
  for i in 1 2 3; do stop_pid "redis cluster node $i" "$D/cluster-$i.pid"; done
  stop_pid "redis sentinel" "$D/sentinel.pid"
}

start() {
  for b in /usr/sbin/slapd /usr/sbin/slapadd /usr/sbin/slaptest /usr/bin/ldapsearch /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/openssl; do
    [ -x "$b" ] || { say "missing $b; scripts/test.sh installs it"; exit 1; }
  done
  if [ -z "$D" ]; then
    D=$(mktemp -d "${TMPDIR:-/tmp}/smarthost-testsvc.XXXXXX")
  else
    [ -d "$D" ] && stop
    rm -rf "$D"
  fi
  mkdir -p "$D/ldap-db"
  local ldap_port ldaps_port redis_port cluster_ports=()
  ldap_port=$(free_port); ldaps_port=$(free_port); redis_port=$(free_port)
  for i in 1 2 3; do cluster_ports+=("$(free_port)"); done
  local sentinel_port; sentinel_port=$(free_port)

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$D/ldap.key" -out "$D/ldap.crt" 2>/dev/null

  # The service account may search people and groups but never read
  # userPassword; users may only bind. rootdn (admin-secret) is for tests
  # that change entries while slapd runs.
  cat > "$D/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include $ROOT/deploy/ldap/smarthost.schema
pidfile  $D/slapd.pid
argsfile $D/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile $D/ldap.crt
TLSCertificateKeyFile $D/ldap.key
database mdb
suffix   "dc=example,dc=com"
rootdn   "cn=admin,dc=example,dc=com"
rootpw   {SSHA}dk/A2sU4FPByR0mxqrtyly6Fzi6aTB4l
directory $D/ldap-db
maxsize  67108864
index    objectClass eq
index    uid,mail,member eq
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
access to dn.base="dc=example,dc=com"
    by dn.exact="cn=relay,ou=services,dc=example,dc=com" read
    by * none
access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.subtree="ou=people,dc=example,dc=com"
    by dn.exact="cn=relay,ou=services,dc=example,dc=com" read
    by self read
    by * none
access to dn.subtree="ou=groups,dc=example,dc=com"
    by dn.exact="cn=relay,ou=services,dc=example,dc=com" read
    by * none
access to * by * none
CONF
  /usr/sbin/slaptest -Q -u -f "$D/slapd.conf"
  /usr/sbin/slapadd -q -f "$D/slapd.conf" -l "$LDIF"
  # -d keeps slapd in the foreground with its log on stderr; without it
  # slapd logs only to syslog, which containers lack.
  /usr/sbin/slapd -f "$D/slapd.conf" -h "ldap://127.0.0.1:$ldap_port/ ldaps://127.0.0.1:$ldaps_port/" \
    -d stats >"$D/slapd.log" 2>&1 &
  echo $! > "$D/slapd.pid"
  /usr/bin/redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$D" --daemonize yes --pidfile "$D/redis.pid" --logfile "$D/redis.log"

  # A Sentinel watching the single Redis as master "smarthost", for the
  # Sentinel tests (redis-server runs as a sentinel with --sentinel).
  cat > "$D/sentinel.conf" <<CONF
port $sentinel_port
bind 127.0.0.1
daemonize yes
pidfile $D/sentinel.pid
logfile $D/sentinel.log
dir $D
sentinel monitor smarthost 127.0.0.1 $redis_port 1
CONF
  /usr/bin/redis-server "$D/sentinel.conf" --sentinel

  # A three-node Redis Cluster, no replicas, for the cluster tests.
  local nodes=()
  for i in 1 2 3; do
    local p=${cluster_ports[$((i-1))]}
    mkdir -p "$D/cluster-$i"
    /usr/bin/redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no --cluster-enabled yes \
      --cluster-config-file "$D/cluster-$i/nodes.conf" --dir "$D/cluster-$i" --daemonize yes \
      --pidfile "$D/cluster-$i.pid" --logfile "$D/cluster-$i.log"
    nodes+=("127.0.0.1:$p")
  done

  # Ready means it answers and it is ours (a stale server on the port would
  # answer too).
  if ! wait_for slapd /usr/bin/ldapsearch -x -LLL -H "ldap://127.0.0.1:$ldap_port/" -b '' -s base 1.1 || ! alive "$(cat "$D/slapd.pid")"; then
    say "slapd failed to start:"; tail -20 "$D/slapd.log" >&2; stop; exit 1
  fi
  if ! wait_for redis /usr/bin/redis-cli -h 127.0.0.1 -p "$redis_port" ping || ! alive "$(cat "$D/redis.pid")"; then
    say "redis failed to start:"; tail -20 "$D/redis.log" >&2; stop; exit 1
  fi
  for n in "${nodes[@]}"; do
    wait_for "cluster node $n" /usr/bin/redis-cli -h 127.0.0.1 -p "${n##*:}" ping || { stop; exit 1; }
  done
  /usr/bin/redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$D/cluster-create.log" 2>&1 \
    || { say "cluster create failed:"; cat "$D/cluster-create.log" >&2; stop; exit 1; }
  sentinel_ok() { /usr/bin/redis-cli -h 127.0.0.1 -p "$sentinel_port" sentinel get-master-addr-by-name smarthost | grep -q "$redis_port"; }
  wait_for "sentinel" sentinel_ok || { say "sentinel failed:"; tail -5 "$D/sentinel.log" >&2; stop; exit 1; }
  cluster_ok() { /usr/bin/redis-cli -h 127.0.0.1 -p "${cluster_ports[0]}" cluster info | grep -q 'cluster_state:ok'; }
  wait_for "cluster state ok" cluster_ok || { stop; exit 1; }
  local cluster_addrs
  cluster_addrs=$(IFS=,; echo "${nodes[*]}")

  cat <<ENV
export SMARTHOST_TESTSVC_DIR=$D
export SMARTHOST_TEST_LDAP_URL=ldap://127.0.0.1:$ldap_port
export SMARTHOST_TEST_LDAPS_URL=ldaps://127.0.0.1:$ldaps_port
export SMARTHOST_TEST_LDAP_CA=$D/ldap.crt
export SMARTHOST_TEST_LDAP_BASE=ou=people,dc=example,dc=com
export SMARTHOST_TEST_LDAP_BIND_DN=cn=relay,ou=services,dc=example,dc=com
export SMARTHOST_TEST_LDAP_BIND_PW=relay-secret
export SMARTHOST_TEST_LDAP_GROUP=cn=smtp-users,ou=groups,dc=example,dc=com
export SMARTHOST_TEST_LDAP_PIDFILE=$D/slapd.pid
export SMARTHOST_TEST_REDIS_ADDR=127.0.0.1:$redis_port
export SMARTHOST_TEST_REDIS_PIDFILE=$D/redis.pid
export SMARTHOST_TEST_REDIS_CLUSTER=$cluster_addrs
export SMARTHOST_TEST_REDIS_SENTINEL=127.0.0.1:$sentinel_port
ENV
}

case ${1:-} in
  start) start ;;
  stop)
    [ -n "$D" ] || { say "SMARTHOST_TESTSVC_DIR is not set: nothing to stop (start exports it)"; exit 0; }
    stop; rm -rf "$D" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
