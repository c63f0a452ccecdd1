#!/usr/bin/env bash
# A throwaway Samba Active Directory domain controller for the integration
# tests (Debian's samba-ad-dc), provisioned offline and seeded with users
# in every account state the relay tells apart.
#
#   eval "$(scripts/samba-ad.sh start)"   # prints export SMARTHOST_TEST_AD_... lines
#   scripts/samba-ad.sh stop
#   scripts/samba-ad.sh image DNS:samba-ad # provisions into $SMARTHOST_AD_DIR for
#                                          # the compose stack's image, to start there
#
# Needs root (Samba binds 389, 636, 3268 and 3269, which it cannot move)
# and: apt-get install --no-install-recommends samba samba-ad-dc
# samba-ad-provision winbind ldap-utils (scripts/test.sh installs them).
#
# Since the ports are fixed, samba runs in a network namespace of its own,
# reached over a veth pair (adh$N on this side, adv$N inside) at
# 198.18.$N.2, so it never clashes with a directory on this machine. Where
# no namespace can be made (a container without CAP_SYS_ADMIN), it binds
# 127.0.$N.1 instead. Knobs:
#   SMARTHOST_AD_NET   1..254: the subnet and the veth names (default: the
#                      first from 39 up that no other instance uses)
#   SMARTHOST_AD_MODE  netns | loopback | auto (default)
#   SMARTHOST_AD_DIR   state folder, wiped at each start
#                      (default /var/tmp/smarthost-samba-ad-$N)
#   SMARTHOST_AD_MAIL_DOMAIN  the users' mail domain (default corp.example.test)
# stop finds the instance by SMARTHOST_AD_DIR, else by SMARTHOST_TEST_AD_DIR
# (which start exports), else by SMARTHOST_AD_NET.
#
# Provisioning and the offline seeding take ~15 s; their result is kept
# under ~/.cache/smarthost-test/ by Samba version, this script and $N for a
# week, so a second start on the same machine takes ~2 s.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

MODE=${SMARTHOST_AD_MODE:-auto}
N=${SMARTHOST_AD_NET:-}
if [ "${1:-}" = start ] && [ -z "$N" ]; then
  # The first subnet no other instance (another checkout's tests) holds.
  for N in $(seq 39 254); do
    ! ip link show "adh$N" >/dev/null 2>&1 && [ ! -e "/var/tmp/smarthost-samba-ad-$N/samba.pid" ] && break
  done
fi
if [ "${1:-}" = start ]; then
  D=${SMARTHOST_AD_DIR:-/var/tmp/smarthost-samba-ad-$N}
else
  D=${SMARTHOST_AD_DIR:-${SMARTHOST_TEST_AD_DIR:-/var/tmp/smarthost-samba-ad-${N:-39}}}
fi
[ -n "$N" ] || N=$(cat "$D/net" 2>/dev/null || echo 39)
REALM=CORP.EXAMPLE.TEST DOMAIN=CORP DNSDOMAIN=corp.example.test
MAIL_DOMAIN=${SMARTHOST_AD_MAIL_DOMAIN:-$DNSDOMAIN}
BASE=DC=corp,DC=example,DC=test
ADMIN_PW='Adm1n-Passw0rd!' SVC_PW='Svc-Relay-Passw0rd!'
HOST_IF=adh$N NS_IF=adv$N
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")

say() { echo "samba-ad: $*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

# A daemon reparented to PID 1 stays a zombie until reaped, which kill -0
# still sees; read its state instead.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }

do_stop() {
  local pid
  if [ -s "$D/samba.pid" ]; then
    pid=$(cat "$D/samba.pid")
    # Only our samba (the pid may have been reused).
    if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = samba ]; then
      kill -TERM "$pid"; kill -CONT "$pid" 2>/dev/null || true # a test may have stopped it
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
      if alive "$pid"; then say "samba ($pid) ignored TERM, killing"; kill -KILL "$pid"; fi
    fi
    rm -f "$D/samba.pid"
  fi
  # The veth goes with the namespace; remove it if something kept that alive.
  if [ "$(cat "$D/mode" 2>/dev/null)" = netns ] && ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link del "$HOST_IF" 2>/dev/null || true
  fi
}

# provision makes the domain in $D, offline: the DC's configuration, then
# the users and groups of the tests (seed.py, below), with addresses in
# $MAIL_DOMAIN. Arguments: more --option=... for samba-tool.
provision() {
  local t
  t=$(now)
  # -s /dev/null: inherit nothing from the system's smb.conf. Every path is
  # set below $D, and only the LDAP server runs (389, 636, 3268, 3269).
  samba-tool domain provision -s /dev/null --targetdir="$D" --realm=$REALM --domain=$DOMAIN --host-name=dc1 \
    --server-role=dc --dns-backend=SAMBA_INTERNAL --use-rfc2307 --adminpass="$ADMIN_PW" \
    "$@" --option="server services=ldap" \
    --option="tls enabled=yes" --option="tls keyfile=$D/tls/key.pem" \
    --option="tls certfile=$D/tls/cert.pem" --option="tls cafile=$D/tls/ca.pem" \
    --option="log file=$D/log/%m.log" --option="pid directory=$D/run" \
    --option="ncalrpc dir=$D/ncalrpc" --option="winbindd socket directory=$D/winbindd" \
    --option="ntp signd socket directory=$D/ntp_signd" \
    >"$D/log/provision.log" 2>&1 || { tail -20 "$D/log/provision.log" >&2; die "provision failed"; }
  say "provisioned in $(since "$t")"
  t=$(now)
  /usr/bin/python3 - "$D/etc/smb.conf" "$MAIL_DOMAIN" >"$D/log/seed.log" 2>&1 <<'PY' || { tail -20 "$D/log/seed.log" >&2; die "seeding failed"; }
# One process for all of it: samba-tool would take ~0.45 s per call.
import sys, ldb
from samba.param import LoadParm
from samba.samdb import SamDB
from samba.auth import system_session
from samba.netcmd.pso import make_pso_ldb_msg
lp = LoadParm(); lp.load(sys.argv[1])
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
base = db.domain_dn(); dom = sys.argv[2]
def dn(sam):
    return db.search(base, ldb.SCOPE_SUBTREE, "(sAMAccountName=%s)" % sam, ["dn"])[0].dn
def put(sam, **attrs):
    m = ldb.Message(dn(sam))
    for k, v in attrs.items():
        k = k.replace("_", "-")
        m[k] = ldb.MessageElement(v, ldb.FLAG_MOD_REPLACE, k)
    db.modify(m)
def user(sam, pw, cn=True, expires=False, **kw):
    # useusernameascn=None: the CN is the display name ("Alice Liddell").
    db.newuser(sam, pw, useusernameascn=True if cn else None, mailaddress="%s@%s" % (sam, dom), **kw)
    if not expires:
        # "Password never expires", so that a cached domain keeps working
        # (it also overrides "must change", hence not for erin and heidi).
        db.setexpiry("(sAMAccountName=%s)" % sam, 0, no_expiry_req=True)

user("svc-relay", "Svc-Relay-Passw0rd!", description="relay search account")
# alice: her CN is not her login; addresses in proxyAddresses among the
# other kinds Exchange keeps there.
user("alice", "Alice-Passw0rd!", cn=False, givenname="Alice", surname="Liddell")
put("alice", proxyAddresses=["SIP:alice@" + dom, "smtp:alice.alias@" + dom,
    "X500:/o=Corp/ou=Exchange Administrative Group/cn=Recipients/cn=alice", "SMTP:alice@" + dom])
# bob: reached only through a nested group; his UPN is not sAMAccountName@realm;
# his class and recipient rules are in attributes of the base schema.
user("bob", "Bob-Passw0rd!", cn=False, givenname="Bob", surname="Builder")
put("bob", proxyAddresses=["smtp:b.builder@" + dom, "SMTP:bob@" + dom],
    userPrincipalName="robert.builder@corp.example.test",
    msDS_cloudExtensionAttribute1="bulk",
    msDS_cloudExtensionAttribute2="allow:*@example.org allow:partner.example deny:ceo@example.org")
# carol: right password, but in no group that may relay.
user("carol", "Carol-Passw0rd!")
# The account states, one user each; their bind errors say which (data ...).
user("dave", "Dave-Passw0rd!")                                     # disabled: 533
db.disable_account("(sAMAccountName=dave)")
user("erin", "Erin-Passw0rd!", expires=True)                                   # must change password: 773
put("erin", pwdLastSet="0")
user("frank", "Frank-Passw0rd!")                                   # account expired: 701
put("frank", accountExpires="116444736000000000")                  # 1970-01-01
user("grace", "Grace-Passw0rd!")                                   # locked out: 775
user("heidi", "Heidi-Passw0rd!", expires=True)                                 # password expired: 532
# An expired password needs pwdLastSet in the past and no "never expires",
# and LDAP takes only 0 and -1 for pwdLastSet: set it with the password,
# under Samba's "bypass last set" control.
m = ldb.Message(dn("heidi"))
m["pwdLastSet"] = ldb.MessageElement("132223104000000000", ldb.FLAG_MOD_REPLACE, "pwdLastSet")  # 2020-01-01
m["clearTextPassword"] = ldb.MessageElement("Heidi-Passw0rd!".encode("utf-16-le"), ldb.FLAG_MOD_REPLACE, "clearTextPassword")
db.modify(m, controls=["local_oid:1.3.6.1.4.1.7165.4.3.20:0"])
# Lockout for grace alone (a PSO), so that wrong passwords never lock the others.
pso = "CN=lockout-pso,CN=Password Settings Container,CN=System,%s" % base
db.add(make_pso_ldb_msg(None, db, pso, True, lockout_threshold=3, complexity="on", precedence=10,
    store_plaintext="off", history_length=0, min_pwd_length=7, min_pwd_age=0, max_pwd_age=0,
    lockout_duration=600, reset_lockout_after=600))
db.modify_ldif("dn: %s\nchangetype: modify\nadd: msDS-PSOAppliesTo\nmsDS-PSOAppliesTo: %s\n" % (pso, dn("grace")))
db.newgroup("Relay Users")
db.newgroup("Relay Nested")
db.add_remove_group_members("Relay Users", ["alice", "Relay Nested", "dave", "erin", "frank", "grace", "heidi"])
db.add_remove_group_members("Relay Nested", ["bob"])
PY
  say "seeded in $(since "$t")"
}

# tls makes the DC's certificate, signed by a CA of its own (as an
# enterprise CA would), with the addresses the tests use.
tls() {
  local san=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj "/CN=Corp Test Root CA" \
    -keyout "$D/tls/ca.key" -out "$D/tls/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=dc1.$DNSDOMAIN" \
    -keyout "$D/tls/key.pem" -out "$D/tls/req.pem" 2>/dev/null
  openssl x509 -req -in "$D/tls/req.pem" -CA "$D/tls/ca.pem" -CAkey "$D/tls/ca.key" -CAcreateserial -days 7 \
    -extfile <(echo "subjectAltName=$san,DNS:dc1.$DNSDOMAIN,DNS:$DNSDOMAIN") -out "$D/tls/cert.pem" 2>/dev/null
  chmod 600 "$D/tls/key.pem" "$D/tls/ca.key"
}

do_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (samba binds 389, 636, 3268 and 3269)"
  for b in samba samba-tool ldapsearch openssl ip; do
    command -v "$b" >/dev/null || die "missing $b (apt-get install samba samba-ad-dc samba-ad-provision winbind ldap-utils iproute2)"
  done
  [ -d /usr/share/samba/setup/ad-schema ] || die "missing /usr/share/samba/setup (apt-get install samba-ad-provision)"
  [ -d "$D" ] && do_stop
  rm -rf "$D"; mkdir -p "$D"
  # Stopped half way (test.sh ending early): leave no samba behind.
  trap 'do_stop; rm -rf "$D"; exit 1' TERM INT
  local T0 mode=$MODE ip ifaces
  T0=$(now)
  if [ "$mode" = auto ]; then
    if unshare --net true 2>/dev/null; then mode=netns; else mode=loopback; fi
  fi
  case $mode in
    netns) ip=198.18.$N.2; ifaces="$ip/30 127.0.0.1/8"
           ip link show "$HOST_IF" >/dev/null 2>&1 && die "interface $HOST_IF exists (another instance? set SMARTHOST_AD_NET)";;
    loopback) ip=127.0.$N.1; ifaces="$ip/8";; # the /8 is needed: a bare address gives "no network interfaces found"
    *) die "SMARTHOST_AD_MODE must be netns, loopback or auto";;
  esac
  if [ "$mode" = loopback ]; then
    # Fail now, not after provisioning, if samba could not bind: a
    # wildcard listener on these ports clashes with any 127.x address.
    local busy
    busy=$(ss -Hltn '( sport = :389 or sport = :636 or sport = :3268 or sport = :3269 )' 2>/dev/null \
             | awk '{print $4}' | grep -E "^(0\.0\.0\.0|\*|\[::\]|$ip):" || true)
    [ -z "$busy" ] || die "already listening: $(echo $busy) (set SMARTHOST_AD_MODE=netns or another SMARTHOST_AD_NET)"
  fi

  # The provisioned, seeded domain from the cache, or a new one for it.
  local key cache
  key=$( { samba --version; sha256sum "$SCRIPT"; echo "$mode $N $D $MAIL_DOMAIN"; } | sha256sum | cut -c1-16)
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test/samba-ad-$N-$(samba --version | awk '{print $2}')-$key.tar
  if [ -s "$cache" ] && [ -n "$(find "$cache" -mtime -7)" ]; then
    tar -C "$D" -xf "$cache"
    say "domain from the cache $cache"
  else
    mkdir -p "$D/tls" "$D/log" "$D/run"
    provision --option="interfaces=$ifaces" --option="bind interfaces only=yes"
    mkdir -p "$(dirname "$cache")"
    rm -f "$(dirname "$cache")"/samba-ad-"$N"-*.tar # older versions
    tar -C "$D" --exclude=./tls --exclude=./log -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
  fi
  mkdir -p "$D/tls" "$D/log" "$D/run"
  tls "IP:$ip"
  echo "$mode" > "$D/mode"; echo "$N" > "$D/net"

  # -F --debug-stdout, not -i: with -i samba exits at EOF on stdin.
  local t pid i ok=
  t=$(now)
  local SAMBA=(samba -s "$D/etc/smb.conf" -F --debug-stdout -M single)
  if [ "$mode" = netns ]; then
    # The inner shell waits for its end of the veth, sets it up, then
    # becomes samba.
    unshare --net -- sh -c '
      ip link set lo up
      i=0; while ! ip link show "$1" >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 200 ] && exit 97; sleep 0.05; done
      ip addr add "$2/30" dev "$1" && ip link set "$1" up || exit 98
      shift 2; exec "$@"' sh "$NS_IF" "$ip" "${SAMBA[@]}" </dev/null >"$D/log/samba.log" 2>&1 &
    pid=$!; echo "$pid" > "$D/samba.pid"
    # Only once the child is in its own namespace, or the veth lands here.
    for i in $(seq 1 100); do
      [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.02
    done
    ip link add "$HOST_IF" type veth peer name "$NS_IF" netns "/proc/$pid/ns/net" \
      && ip addr add "198.18.$N.1/30" dev "$HOST_IF" && ip link set "$HOST_IF" up \
      || { do_stop; die "veth setup failed"; }
  else
    "${SAMBA[@]}" </dev/null >"$D/log/samba.log" 2>&1 &
    pid=$!; echo "$pid" > "$D/samba.pid"
  fi
  # Ready: the rootDSE answers with our DC's name and our samba lives (a
  # stale server on the address would answer too). timeout: a listener
  # that never answers would hold ldapsearch forever.
  for i in $(seq 1 1200); do
    alive "$pid" || break
    if timeout 3 ldapsearch -x -LLL -o nettimeout=2 -H "ldap://$ip:389" -b '' -s base dnsHostName 2>/dev/null \
        | grep -qi "^dnsHostName: dc1.$DNSDOMAIN"; then ok=1; break; fi
    sleep 0.05
  done
  if [ -z "$ok" ] || ! alive "$pid"; then say "samba failed to start:"; tail -20 "$D/log/samba.log" >&2; do_stop; exit 1; fi
  say "samba ($mode, pid $pid) answering on $ip after $(since "$t")"

  # grace is locked out by three wrong passwords (her PSO's threshold).
  for i in 1 2 3; do
    LDAPTLS_CACERT="$D/tls/ca.pem" timeout 5 ldapsearch -x -H "ldaps://$ip:636" -D "grace@$DNSDOMAIN" -w "wrong-$i" \
      -b '' -s base 1.1 >/dev/null 2>&1 || true
  done
  local out
  out=$(LDAPTLS_CACERT="$D/tls/ca.pem" timeout 5 ldapsearch -x -H "ldaps://$ip:636" -D "grace@$DNSDOMAIN" \
    -w 'Grace-Passw0rd!' -b '' -s base 1.1 2>&1 || true)
  [[ $out == *"data 775"* ]] || die "grace is not locked out: $out"
  say "ready in $(since "$T0")"

  cat <<ENV
export SMARTHOST_TEST_AD_DIR=$D
export SMARTHOST_TEST_AD_PIDFILE=$D/samba.pid
export SMARTHOST_TEST_AD_HOST=$ip
export SMARTHOST_TEST_AD_URL=ldap://$ip:389
export SMARTHOST_TEST_AD_LDAPS_URL=ldaps://$ip:636
export SMARTHOST_TEST_AD_GC_URL=ldap://$ip:3268
export SMARTHOST_TEST_AD_GCS_URL=ldaps://$ip:3269
export SMARTHOST_TEST_AD_CA=$D/tls/ca.pem
export SMARTHOST_TEST_AD_BASE='$BASE'
export SMARTHOST_TEST_AD_BIND_DN='CN=svc-relay,CN=Users,$BASE'
export SMARTHOST_TEST_AD_BIND_PW='$SVC_PW'
export SMARTHOST_TEST_AD_GROUP='CN=Relay Users,CN=Users,$BASE'
export SMARTHOST_TEST_AD_ADMIN='Administrator@$DNSDOMAIN'
export SMARTHOST_TEST_AD_ADMIN_PW='$ADMIN_PW'
ENV
}

# do_image provisions into $D for a container image (deploy/compose/samba-ad):
# listening on every interface, a certificate for the names given.
do_image() {
  mkdir -p "$D/tls" "$D/log" "$D/run"
  tls "$1"
  # A build has no CAP_SYS_ADMIN, which the sysvol's NT ACLs (security.*
  # extended attributes) need: keep them in a tdb file instead.
  provision --option="vfs objects=dfs_samba4 acl_xattr xattr_tdb" --option="xattr_tdb:file=$D/xattr.tdb"
}

case ${1:-} in
  start) do_start ;;
  image) do_image "${2:?image needs the certificate names, e.g. DNS:samba-ad}" ;;
  stop) do_stop; rm -rf "$D" ;;
  *) echo "usage: $0 start|stop|image SAN" >&2; exit 2 ;;
esac
