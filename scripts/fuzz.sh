#!/usr/bin/env bash
# Runs every fuzz target (each `func FuzzX` in a _test.go file) for a while:
#
#   scripts/fuzz.sh [DURATION] [--corpus]     # DURATION: 30s, 5m (default), 1h
#
# For longer runs than CI's: scripts/test.sh runs each target for 5 s as a
# smoke test (`scripts/fuzz.sh 5s`). A target that finds a failing input
# stops; go test has then written that input to the package's
# testdata/fuzz/FuzzX/, where every later `go test` runs it as a
# regression test. The script goes on with the other targets, lists the
# new inputs at the end and exits 1: fix the bug, and commit the input
# with the fix.
#
# --corpus also copies the inputs each target found new code with (kept
# in Go's cache) into its testdata/fuzz/FuzzX/, the corpus committed with
# the code, which every `go test` runs and every fuzzing run starts from.
#
# Minimizing: the fuzzer shrinks each new input, byte by byte, for up to
# -fuzzminimizetime (Go's default is a minute, per input, with nothing
# fuzzed meanwhile). That is what made FuzzParse and FuzzBodyHash look
# slow; a few seconds keeps inputs small enough.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin

duration=5m corpus=
for a in "$@"; do
  case $a in
    --corpus) corpus=1 ;;
    [0-9]*[smh]) duration=$a ;;
    *) echo "usage: scripts/fuzz.sh [DURATION] [--corpus]" >&2; exit 2 ;;
  esac
done
case $duration in
  *s) secs=${duration%s} ;;
  *m) secs=$(( ${duration%m} * 60 )) ;;
  *h) secs=$(( ${duration%h} * 3600 )) ;;
esac
cache=$(go env GOCACHE)/fuzz/$(go list -m)

# pkg:FuzzX for every target.
targets=()
while IFS= read -r f; do
  for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
    targets+=("./$(dirname "$f"):$name")
  done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | sort)

# fuzz_one PKG NAME: the target's seeds and corpus, then the fuzzing, with
# ten minutes of room beyond the duration.
fuzz_one() {
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$duration" -fuzzminimizetime 5s \
    -timeout "$(( secs + 600 ))s" "$1"
}

before=$(git ls-files -o --exclude-standard -- '*/testdata/fuzz/*' | sort)
failed=()
for t in "${targets[@]}"; do
  pkg=${t%%:*} name=${t#*:}
  echo "fuzz: $pkg $name for $duration" >&2
  # A failure that wrote no failing input is the fuzzing engine's own (a
  # worker it killed on a loaded machine: "signal: terminated"), not the
  # code's: that target runs once more, and fails for good the second time.
  inputs=$(ls "$pkg/testdata/fuzz/$name" 2>/dev/null | wc -l)
  if ! fuzz_one "$pkg" "$name"; then
    if [ "$(ls "$pkg/testdata/fuzz/$name" 2>/dev/null | wc -l)" = "$inputs" ]; then
      echo "fuzz: $pkg $name failed without a failing input; once more" >&2
      fuzz_one "$pkg" "$name" || failed+=("$t")
    else
      failed+=("$t")
    fi
  fi
  if [ -n "$corpus" ] && [ -d "$cache/${pkg#./}/$name" ]; then
    mkdir -p "$pkg/testdata/fuzz/$name"
    cp -n "$cache/${pkg#./}/$name"/* "$pkg/testdata/fuzz/$name/"
  fi
done

after=$(git ls-files -o --exclude-standard -- '*/testdata/fuzz/*' | sort)
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failing inputs found by ${failed[*]}; new regression inputs:" >&2
  comm -13 <(echo "$before") <(echo "$after") >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, $duration each, no failing input" >&2
