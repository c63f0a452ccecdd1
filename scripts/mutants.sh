#!/usr/bin/env bash
# The mutation check of the lines that carry smarthost's promises: each
# mutant removes one of them (a sync before acknowledging, AUTH required,
# the ownership check, the rate-limit charge, the journal's "done" record,
# the hand-off's cut) in a throwaway copy of the tree, runs the tests that
# must catch it, and reports any that still pass: a survivor. One more
# mutant breaks the test sink instead of the relay (a copy of a message
# arrives again once the sink has gone quiet), for the tests that count
# "exactly once". docs/reliability.md has the last result.
#
#   scripts/mutants.sh             # every mutant (about 30 minutes on 2 busy cores)
#   scripts/mutants.sh NAME...     # those only
#   scripts/mutants.sh --list
#   scripts/mutants.sh --check     # each still applies to the code (seconds)
#
# Not part of CI. It needs what scripts/test.sh installs (run that once),
# and starts the test services itself unless SMARTHOST_TEST_* are set. The
# copy is of the working tree as it is (tracked files and new ones that
# are not ignored), so a change can be checked before it is committed; the
# tree itself is never written to. The listed tests run first on the copy
# unchanged (under CI=true, so that nothing skips) and must pass. Exit
# status 1 if a mutant survives, no longer applies (its line changed:
# update it here) or does not build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin

names=() whys=() files=() pats=() repls=() tests=() says=()
# mutant NAME WHAT FILE PERL-REGEX REPLACEMENT "PKG:TEST ..." [TEXT]
# The regex (Perl, over the whole file, with \n and \t) must match exactly
# once; TEXT, if given, must be in the output of every test that fails
# (the durability tests name the sync that is missing).
mutant() { names+=("$1"); whys+=("$2"); files+=("$3"); pats+=("$4"); repls+=("$5"); tests+=("$6"); says+=("${7:-}"); }

mutant journal-fdatasync "the journal's fdatasync before acknowledging" relay/queue/journal.go \
  '\t\tif err == nil && durable \{\n\t\t\terr = j\.disk\.fdatasync\(seg\.f\)\n\t\t\}\n' '' \
  './relay/queue:TestCommitOnlyAfterSync ./cmd/smarthost:TestAcknowledgedOnlyAfterFsync' "journal's fdatasync"
mutant draft-fsync "the fsync of a message's own file before its rename into msg/" relay/queue/draft.go \
  '\tif err := d\.q\.disk\.fsync\(d\.f\); err != nil \{\n\t\td\.Abort\(\)\n[^\n]*\n\t\}\n' '' \
  './relay/queue:TestCommitOnlyAfterSync ./cmd/smarthost:TestAcknowledgedOnlyAfterFsync' "draft's fsync"
mutant folder-sync "the sync of msg/ after a message's file is renamed into it" relay/queue/folder.go \
  '\tif err := f\.sync\.sync\(\); err != nil \{\n\t\tos\.Remove\(m\.dataPath\(\)\)\n[^\n]*\n\t\}\n' '' \
  './relay/queue:TestCommitOnlyAfterSync ./cmd/smarthost:TestAcknowledgedOnlyAfterFsync' "msg/ after the rename"
mutant journal-dir-sync "the sync of journal/ after a new journal file is created" relay/queue/journal.go \
  '\tif err := j\.disk\.syncDir\(j\.dir\); err != nil \{\n\t\tf\.Close\(\)\n\t\tos\.Remove\(s\.path\)\n[^\n]*\n\t\}\n' '' \
  './relay/queue:TestCommitOnlyAfterSync ./cmd/smarthost:TestAcknowledgedOnlyAfterFsync' "journal/ after creating"
mutant auth-required "MAIL without AUTH (and not from a trusted network) is refused" policy/policy.go \
  '(func \(p \*Policy\) CheckSender\(c Client, from string\) error \{\n)\tif c\.User == nil && !p\.Trusted\(c\) \{\n\t\treturn ErrAuthRequired\n\t\}\n' \
  'func (p *Policy) CheckSender(c Client, from string) error {\n' \
  './policy:TestCheckSenderAndRecipient ./relay:TestNoAuthRefused|TestEveryReplyOnTheWire ./cmd/smarthost:TestRefusalsWithRealClients'
mutant ownership "a user sends only as an address they own" policy/policy.go \
  '\tif !matchSplit\(c\.User\.Addresses, local, domain\) \{\n\t\treturn fmt\.Errorf\("%w: %q by %s", ErrSenderNotOwned, from, c\.User\.Name\)\n\t\}\n' '' \
  './policy:TestCheckSenderAndRecipient ./relay:TestSenderOwnership|TestEveryReplyOnTheWire ./cmd/smarthost:TestRefusalsWithRealClients'
mutant ratelimit-charge "each message is charged to its sender's quota" ratelimit/ratelimit.go \
  'return q\.charge\(ctx, user, "messages", q\.class\(class\)\.Messages, 1\)' 'return nil' \
  './ratelimit:TestQuotas ./relay:TestMessageAndRecipientLimits|TestEveryReplyOnTheWire ./cmd/smarthost:TestLimitExactAcrossTwoNodes|TestMemoryLimitsAndView'
mutant done-record "a delivered journal message is recorded as done" relay/queue/queue.go \
  '\t\tq\.journal\.done\(m\.jseg, m\.ID\)\n\t\tm\.jseg = nil\n' '\t\tm.jseg = nil\n' \
  './relay/queue:TestJournalHoldsSmallMessages|TestJournalFilesRemovedInOrder ./cmd/smarthost:TestSIGKILLDuringBurst'
mutant handoff-cut "a drain cuts short the deliveries in flight through the routes" relay/queue/queue.go \
  '\tq\.leave\(ErrLeaving\)\n' '' \
  './relay/queue:TestHandoffCutsShortDeliveriesInFlight ./cmd/smarthost:TestDrainCutsShortATarpit'
# The tests' own check: a sink that gets one copy too many, late.
mutant sink-late-copy "the exactly-once tests count a copy that arrives after the count was reached" relay/relaytest/sink.go \
  '(\tss\.s\.last = time\.Now\(\)\n)' '\tss.s.last = time.Now()\n\tmutantLateCopy(ss.s, ss.msg)\n' \
  './cmd/smarthost:TestDrainHandsOffTheQueue|TestDrainCutsShortATarpit|TestOAuth2TokenExpiryAndRevocation'

if [ "${1:-}" = --list ]; then
  for i in "${!names[@]}"; do printf '%-18s %s (%s)\n' "${names[$i]}" "${whys[$i]}" "${files[$i]}"; done
  exit 0
fi
if [ "${1:-}" = --check ]; then # each mutant still applies (seconds; no test runs)
  bad=0
  for i in "${!names[@]}"; do
    n=$(MUT_RE=${pats[$i]} perl -0777 -ne '$n = () = /$ENV{MUT_RE}/g; print $n' "${files[$i]}")
    [ "$n" = 1 ] || { echo "${names[$i]}: $n matches in ${files[$i]}, want 1" >&2; bad=1; }
  done
  exit $bad
fi
pick=("$@")
[ ${#pick[@]} -gt 0 ] || pick=("${names[@]}")

work=$(mktemp -d "${TMPDIR:-/tmp}/smarthost-mutants.XXXXXX")
started_services=
cleanup() {
  rm -rf "$work"
  [ -z "$started_services" ] || scripts/test-services.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
git ls-files -z -co --exclude-standard | tar --null -cf - -T - | tar -xf - -C "$work"
# The late copy the sink-late-copy mutant calls: once per sink, 300 ms
# after its last arrival (well within the tests' quiet time).
cat >>"$work/relay/relaytest/sink.go" <<'EOF'

var mutantMu sync.Mutex
var mutantTimers = map[*Sink]*time.Timer{}

func mutantLateCopy(s *Sink, m Message) {
	mutantMu.Lock()
	defer mutantMu.Unlock()
	if t, ok := mutantTimers[s]; ok {
		if t == nil || !t.Stop() {
			return // already sent its copy
		}
	}
	mutantTimers[s] = time.AfterFunc(300*time.Millisecond, func() {
		mutantMu.Lock()
		mutantTimers[s] = nil
		mutantMu.Unlock()
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.last = time.Now()
		s.mu.Unlock()
	})
}
EOF
if [ -z "${SMARTHOST_TEST_LDAP_URL:-}" ]; then
  eval "$(scripts/test-services.sh start)"
  started_services=1
fi
export CI=true # a skip is a failure: a test that skipped would pass for the wrong reason

# run_tests LIST: runs each PKG:TEST of LIST in the copy; prints one line
# per test (PASS, or FAIL and the output's file).
run_tests() {
  local t pkg run log
  for t in $1; do
    pkg=${t%%:*} run=${t#*:}
    log=$(mktemp "$work/log.XXXXXX")
    if (cd "$work" && go test -count=1 -timeout 15m -run "^($run)\$" "$pkg") >"$log" 2>&1; then
      echo "PASS $pkg $run $log"
    else
      echo "FAIL $pkg $run $log"
    fi
  done
}

status=0
declare -A baseline_ok=()
for name in "${pick[@]}"; do
  i=-1
  for j in "${!names[@]}"; do [ "${names[$j]}" = "$name" ] && i=$j; done
  if [ "$i" -lt 0 ]; then echo "mutants: no mutant $name (--list)" >&2; exit 2; fi
  f=${files[$i]}
  for t in ${tests[$i]}; do
    [ -n "${baseline_ok[$t]:-}" ] && continue
    read -r res pkg run log < <(run_tests "$t")
    if [ "$res" != PASS ]; then
      echo "mutants: $pkg -run '$run' fails on the unchanged tree; fix that first:" >&2
      grep -E -e '--- FAIL' -e '^\s+[a-z_0-9]+\.go:[0-9]+: ' "$log" | head -40 >&2
      exit 1
    fi
    baseline_ok[$t]=1
  done
  cp "$work/$f" "$work/$f.orig"
  n=$(MUT_RE=${pats[$i]} perl -0777 -ne '$n = () = /$ENV{MUT_RE}/g; print $n' "$work/$f")
  if [ "$n" != 1 ]; then
    echo "$name: NO LONGER APPLIES ($n matches in $f): update scripts/mutants.sh"
    status=1
    continue
  fi
  repl=$(printf '%b.' "${repls[$i]}") # the dot keeps a trailing newline
  MUT_RE=${pats[$i]} MUT_REPL=${repl%.} perl -0777 -i -pe 's/$ENV{MUT_RE}/$ENV{MUT_REPL}/' "$work/$f"
  if ! (cd "$work" && go vet "./$(dirname "$f")" >/dev/null 2>&1); then
    echo "$name: DOES NOT BUILD: update scripts/mutants.sh"
    status=1
    mv "$work/$f.orig" "$work/$f"
    continue
  fi
  caught=() survived=()
  while read -r res pkg run log; do
    if [ "$res" = PASS ]; then
      survived+=("$pkg -run '$run'")
    elif [ -n "${says[$i]}" ] && ! grep -q -- "${says[$i]}" "$log"; then
      survived+=("$pkg -run '$run' (failed without naming ${says[$i]})")
    else
      caught+=("$(grep -oE -- '--- FAIL: [A-Za-z0-9_]+' "$log" | awk '{print $3}' | sort -u | paste -sd, -)")
    fi
  done < <(run_tests "${tests[$i]}")
  mv "$work/$f.orig" "$work/$f"
  if [ ${#survived[@]} -gt 0 ]; then
    echo "$name (${whys[$i]}): SURVIVED ${survived[*]}"
    status=1
  else
    echo "$name (${whys[$i]}): caught by ${caught[*]}"
  fi
done
exit $status
