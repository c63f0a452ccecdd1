#!/usr/bin/env bash
# go test as scripts/test.sh runs it:
#
#   scripts/go-test.sh [go test flags] PACKAGES...     # ./... or ./pkg
#
# - each package with its own deadline (-timeout, which go test applies to
#   each package's test binary), from the table below;
# - -v, without its noise (RUN lines, the lines of tests that passed), so
#   that the figures the tests log (duplicates, timings, peaks) are in the
#   output;
# - under CI=true, a skipped test fails the run: CI installs and starts
#   everything the tests need, so a skip there is a test that passed
#   without running. A test that does not apply to a pass is left out by
#   name with -skip instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each package's deadline: three times or more its longest run measured
# with -race -p 1 on two cores under other work (load average 15-20), and
# two minutes at least. Longest runs measured, in seconds: cmd/smarthost
# 785 (without the compose stacks and the AD tests, which CI adds),
# dkim 69, relay 32, ratelimit 15, relay/queue 11,
# relay/upstream 11, relay/history 10, docs 5, policy 4, policy/ldap 4, cmd/smtpload 2,
# relay/smtpd 2, relay/upstream/smtpclient 2, configs 2, relay/headers 1,
# relay/daemon 8 (headless Chromium included), relay/webhook 6, relay/inspect 2,
# cmd/internal/cmdline 1.
# A package not listed gets default_deadline, and a line saying so.
declare -A deadline=(
  [cmd/smarthost]=45m
  [dkim]=5m
  [relay]=3m
  [ratelimit]=2m
  [relay/queue]=2m
  [relay/history]=2m
  [relay/upstream]=2m
  [relay/upstream/smtpclient]=2m
  [docs]=2m
  [policy]=2m
  [policy/ldap]=2m
  [cmd/smtpload]=2m
  [relay/smtpd]=2m
  [configs]=2m
  [relay/headers]=2m
  [relay/relaytest]=2m
  [relay/daemon]=3m
  [relay/webhook]=2m
  [relay/inspect]=2m
  [cmd/internal/cmdline]=2m
)
default_deadline=5m

flags=() pkgs=()
for a in "$@"; do
  case $a in
    ./*) pkgs+=("$a") ;;
    *) flags+=("$a") ;;
  esac
done
[ ${#pkgs[@]} -gt 0 ] || { echo "usage: scripts/go-test.sh [go test flags] PACKAGES..." >&2; exit 2; }
mod=$(go list -m)
declare -A groups=()
for p in $(go list "${pkgs[@]}"); do
  rel=${p#"$mod"}
  rel=${rel#/}
  d=${deadline[$rel]:-}
  if [ -z "$d" ]; then
    echo "go-test.sh: no measured deadline for ./$rel yet, $default_deadline: add one to scripts/go-test.sh" >&2
    d=$default_deadline
  fi
  groups[$d]+=" ./$rel"
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for d in $(printf '%s\n' "${!groups[@]}" | sort); do
  # shellcheck disable=SC2086 # the group is a list of packages
  go test -v -timeout "$d" "${flags[@]}" ${groups[$d]} 2>&1 | tee -a "$log" |
    { grep -v -E '^\s*(=== (RUN|PAUSE|CONT|NAME) |--- PASS: |PASS$)' || true; } || status=1
done
if [ "${CI:-}" = true ] && grep -q -E '^\s*--- SKIP: ' "$log"; then
  echo "go-test.sh: tests skipped under CI=true, where everything they need is installed (a skip is a pass without a test):" >&2
  grep -E -B2 '^\s*--- SKIP: ' "$log" >&2
  exit 1
fi
exit $status
