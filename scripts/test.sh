#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's:
# installs what is missing (apt-get), starts slapd and redis-server on free
# loopback ports and a Samba AD domain controller in a network namespace
# of its own, builds the image and the compose stack's images where a
# Docker engine answers (none answering under CI=true is a failure), runs
# gofmt/vet/staticcheck, `go test -race ./...`, a choice of the end-to-end
# tests again against the static release binary and the OpenSSL variant, and the Helm
# chart's checks, and stops the services again. Extra arguments go to
# `go test`; without any, each fuzz target also runs for 5 s (in the
# background while the tools and images build). go test runs through
# scripts/go-test.sh: each package with its own deadline, the figures the
# tests log printed, and under CI=true a skipped test is a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin

need=()
for f in /usr/sbin/slapd:slapd /usr/bin/ldapsearch:ldap-utils /usr/bin/redis-server:redis-server \
         /usr/bin/openssl:openssl /usr/bin/swaks:swaks /usr/share/perl5/IO/Socket/SSL.pm:libio-socket-ssl-perl \
         /usr/share/perl5/Authen/SASL.pm:libauthen-sasl-perl /usr/bin/dkimverify:python3-dkim \
         /usr/share/perl5/Mail/DKIM/Verifier.pm:libmail-dkim-perl /usr/sbin/smtp-sink:postfix \
         /usr/bin/docker-compose:docker-compose /usr/sbin/haproxy:haproxy \
         /etc/ssl/certs/ca-certificates.crt:ca-certificates /usr/include/openssl/evp.h:libssl-dev /usr/bin/gcc:gcc \
         /usr/include/stdlib.h:libc6-dev /usr/bin/readelf:binutils /usr/bin/strace:strace \
         /usr/bin/curl:curl /usr/bin/msmtp:msmtp /usr/bin/s-nail:s-nail /usr/share/nodejs/nodemailer/package.json:node-nodemailer \
         /usr/sbin/saslpasswd2:sasl2-bin /usr/lib/x86_64-linux-gnu/sasl2/libplain.so:libsasl2-modules \
         /usr/sbin/debootstrap:debootstrap /usr/lib/dovecot/submission:dovecot-submissiond \
         /usr/bin/php:php-cli /usr/share/php/libphp-phpmailer/autoload.php:libphp-phpmailer \
         /usr/lib/python3/dist-packages/django/__init__.py:python3-django \
         /usr/sbin/samba:samba /usr/share/doc/samba-ad-dc/copyright:samba-ad-dc \
         /usr/share/samba/setup/ad-schema:samba-ad-provision /usr/bin/wbinfo:winbind /bin/ip:iproute2 \
         /usr/bin/testssl:testssl.sh /usr/bin/systemd-analyze:systemd /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml \
         /usr/bin/promtool:prometheus /usr/bin/chromium:chromium; do
  [ -e "${f%%:*}" ] || need+=("${f##*:}")
done
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
perl -MCrypt::PK::Ed25519 -e1 2>/dev/null || need+=(libcryptx-perl)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  # Without this, slapd's postinst builds a system directory and starts a
  # system slapd on :389; the tests run their own.
  echo 'slapd slapd/no_configuration boolean true' | $SUDO debconf-set-selections
  # Postfix only for its smtp-sink test server: no mail system configured.
  echo 'postfix postfix/main_mailer_type select No configuration' | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Samba AD domain controller (scripts/samba-ad.sh), in a network
# namespace of its own: provisioning takes up to a minute on a cold
# machine, so it starts now, in the background, while the tools and images
# below are built. It needs root; elsewhere its tests skip (fail under CI).
ad_pid= ad_env=$(mktemp) ad_log=$(mktemp)
stop_ad() {
  [ -n "$ad_pid" ] && kill "$ad_pid" 2>/dev/null && wait "$ad_pid" 2>/dev/null
  if [ -s "$ad_env" ]; then (. "$ad_env" && scripts/samba-ad.sh stop); fi
  rm -f "$ad_env" "$ad_log" "${ad_image_log:-}"
}
if [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
  echo "test.sh: starting the Samba AD domain controller in the background" >&2
  scripts/samba-ad.sh start >"$ad_env" 2>"$ad_log" </dev/null &
  ad_pid=$!
fi
trap stop_ad EXIT

# The fuzz targets' smoke test (scripts/fuzz.sh 5s: each target's seeds and
# committed corpus, then 5 s of fuzzing), in the background while the
# tools and images below build; waited for before go test, which it would
# slow down.
fuzz_pid= fuzz_log=$(mktemp)
stop_fuzz() {
  [ -n "$fuzz_pid" ] && kill "$fuzz_pid" 2>/dev/null && wait "$fuzz_pid" 2>/dev/null
  rm -f "$fuzz_log"
}
if [ $# -eq 0 ]; then
  echo "test.sh: fuzz smoke test in the background (scripts/fuzz.sh 5s)" >&2
  scripts/fuzz.sh 5s >"$fuzz_log" 2>&1 </dev/null &
  fuzz_pid=$!
fi
trap 'stop_ad; stop_fuzz' EXIT

# Mailpit, an upstream many teams develop against, from the Go module
# proxy (it is not packaged for Debian); once per machine.
MAILPIT_VERSION=v1.33.1
mailpit_dir="${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test/mailpit-$MAILPIT_VERSION"
if [ ! -x "$mailpit_dir/mailpit" ]; then
  echo "test.sh: building mailpit $MAILPIT_VERSION" >&2
  GOBIN="$mailpit_dir" GOFLAGS= go install "github.com/axllent/mailpit@$MAILPIT_VERSION"
fi
export SMARTHOST_TEST_MAILPIT="$mailpit_dir/mailpit"

# ORY Hydra, the OAuth2 server of the upstream OAuth2 tests. Its go.mod
# replaces gobuffalo/pop with ORY's fork, and `go install pkg@version`
# ignores replace directives: it is built in a throwaway module that
# repeats the replacement, with cgo and the sqlite tag for its in-memory
# store. Once per machine.
HYDRA_VERSION=v2.3.0
hydra_dir="${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test/hydra-$HYDRA_VERSION"
if [ ! -x "$hydra_dir/hydra" ]; then
  echo "test.sh: building hydra $HYDRA_VERSION" >&2
  hydra_mod=$(mktemp -d)
  (cd "$hydra_mod" && export GOFLAGS= CGO_ENABLED=1 &&
    go mod init hydrabuild >/dev/null 2>&1 &&
    go mod edit -replace github.com/gobuffalo/pop/v6=github.com/ory/pop/v6@v6.2.1-0.20241121111754-e5dfc0f3344b &&
    go get "github.com/ory/hydra/v2@$HYDRA_VERSION" >/dev/null 2>&1 &&
    go build -tags sqlite -o "$hydra_dir/hydra" github.com/ory/hydra/v2)
  rm -rf "$hydra_mod"
fi
export SMARTHOST_TEST_HYDRA="$hydra_dir/hydra"

# The image and the compose stack's images, wherever a Docker engine
# answers: no registry is needed (scripts/image.sh, scripts/standins.sh).
if docker info >/dev/null 2>&1; then
  echo "test.sh: images (scripts/image.sh, scripts/standins.sh)" >&2
  scripts/image.sh >/dev/null 2> >(grep -v -i -e deprecated -e buildx -e 'docs.docker.com' >&2)
  scripts/standins.sh 2> >(grep -v -i -e deprecated -e buildx -e 'docs.docker.com' >&2)
  # The Samba DC of the compose stack's "ad" profile (apt-get and
  # provisioning: minutes), in the background while the checks below run.
  ad_image_log=$(mktemp)
  docker build -q -t smarthost-demo-samba-ad:latest -f deploy/compose/samba-ad/Dockerfile . >"$ad_image_log" 2>&1 &
  ad_image_pid=$!
  export SMARTHOST_TEST_COMPOSE=1
  # The release (scripts/release.sh, twice, and its tests: the .deb in a
  # Debian root, the images, the README's docker run, testssl.sh, the
  # single-relay compose stack) beside the Go suite: it waits mostly on
  # the network, dpkg and Docker.
  release_log=$(mktemp)
  scripts/release-check.sh > "$release_log" 2>&1 &
  release_pid=$!
elif [ "${CI:-}" = true ]; then
  echo "test.sh: no Docker engine answers under CI: the image and compose tests cannot run" >&2
  exit 1
fi

eval "$(scripts/test-services.sh start)"
trap 'scripts/test-services.sh stop; stop_ad; stop_fuzz' EXIT

echo "test.sh: go mod verify; no tracked file over 1 MiB outside docs/" >&2
go mod verify
big=$(git ls-files -z | grep -zv '^docs/' | xargs -0 -r stat -c '%s %n' -- 2>/dev/null | awk '$1 > 1048576')
[ -z "$big" ] || { echo "tracked files over 1 MiB outside docs/ (build output or data that belongs elsewhere): $big" >&2; exit 1; }

echo "test.sh: gofmt, go vet, staticcheck" >&2
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }
go vet ./...
go vet -tags openssl ./dkim/ ./cmd/...
command -v staticcheck >/dev/null || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
staticcheck ./...
staticcheck -tags openssl ./dkim/ ./cmd/...

echo "test.sh: the Prometheus alert rules (promtool check rules, test rules)" >&2
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts_test.yaml)

# The domain controller and its image, started in the background above.
if [ -n "$ad_pid" ]; then
  if wait "$ad_pid"; then
    ad_pid=
    . "$ad_env"
    cat "$ad_log" >&2
  else
    ad_pid=
    echo "test.sh: the Samba AD domain controller did not start:" >&2; cat "$ad_log" >&2
    [ "${CI:-}" != true ] || exit 1
  fi
fi
if [ -n "${ad_image_pid:-}" ] && ! wait "$ad_image_pid"; then
  echo "test.sh: the compose stack's Samba DC image did not build:" >&2; tail -30 "$ad_image_log" >&2
  exit 1
fi

if [ -n "$fuzz_pid" ]; then
  if wait "$fuzz_pid"; then
    fuzz_pid=
    grep -E '^fuzz: [0-9]+ targets' "$fuzz_log" >&2
  else
    fuzz_pid=
    echo "test.sh: the fuzz smoke test failed:" >&2; grep -v '^fuzz: elapsed' "$fuzz_log" >&2
    exit 1
  fi
fi

echo "test.sh: go test -race ./..." >&2
# -p 1: one test binary at a time, since some tests freeze the shared
# slapd (SIGSTOP) to play an outage. The release test needs the release
# binary: it runs in the passes below.
scripts/go-test.sh -race -count=1 -p 1 -skip TestReleaseBinaryInEmptyRoot "$@" ./...

# The release binary (scripts/build.sh: static, pure Go), as the image
# ships it (the compose stacks ran above, on the image), once from an
# empty chroot. Every end-to-end test ran above on a -race build of the
# same source; what the release build changes is cgo off (Go's own
# resolver and user lookup), -trimpath, the version stamp and no race
# runtime, so this pass runs the tests those could break, and one of each
# path a message takes (submission, LDAP and AD, DKIM, the queue's fsync,
# a crash, the hand-off, the limits across nodes, OAuth2, shaping, the
# trace), not all of them twice: the pass would add 9 minutes to CI. Then
# the opt-in OpenSSL variant: its signer under -race, and the release
# tests against its binary.
echo "test.sh: the release binary: SMARTHOST_BIN=... go test ./cmd/smarthost/" >&2
release=$(mktemp -d)
trap 'rm -rf "$release"; scripts/test-services.sh stop; stop_ad; stop_fuzz' EXIT
scripts/build.sh -o "$release/smarthost" >/dev/null
release_tests='TestReleaseBinaryInEmptyRoot|TestPasswdAndVersion|TestHelpEverywhere|TestCheckConfig|TestEveryCommandFindsTheConfig'
release_tests+='|TestReadmeQuickStart|TestQuickstartCertificatePinned|TestSwaksToOutbox|TestMailpitUpstream|TestLDAPUsersEndToEnd'
release_tests+='|TestActiveDirectory|TestDKIMCheck|TestDKIMSelfCheckAtStartAndReload|TestAcknowledgedOnlyAfterFsync|TestSIGKILLDuringBurst'
release_tests+='|TestDrainHandsOffTheQueue|TestLimitExactAcrossTwoNodes|TestOAuth2Upstream|TestShapingExactAcrossTwoRelays|TestTraceByMessageID'
SMARTHOST_BIN=$release/smarthost scripts/go-test.sh -race -count=1 -p 1 -run "^($release_tests)\$" "$@" ./cmd/smarthost/
echo "test.sh: the OpenSSL variant: go test -race -tags openssl ./dkim/; its binary's release tests" >&2
scripts/go-test.sh -race -count=1 -p 1 -tags openssl "$@" ./dkim/
scripts/build.sh --openssl -o "$release/smarthost-openssl" >/dev/null
SMARTHOST_BIN=$release/smarthost-openssl scripts/go-test.sh -race -count=1 -p 1 -tags openssl -run 'TestReleaseBinaryInEmptyRoot|TestSwaksToOutbox|TestMailpitUpstream' "$@" ./cmd/smarthost/

echo "test.sh: the Helm chart (scripts/helm-check.sh)" >&2
scripts/helm-check.sh

if [ -n "${release_pid:-}" ]; then
  echo "test.sh: the release (scripts/release-check.sh, run beside the rest)" >&2
  if ! wait "$release_pid"; then
    cat "$release_log" >&2
    echo "test.sh: the release checks failed" >&2
    exit 1
  fi
  cat "$release_log"
fi
