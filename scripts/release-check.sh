#!/usr/bin/env bash
# The release as CI checks it, beside the Go test suite (scripts/test.sh
# runs this in parallel with it):
#   - scripts/release.sh VERSION (the Helm chart's appVersion) twice: both
#     give the same binaries, tarballs, .debs and SBOM (SHA256SUMS
#     compared); once more for an earlier version's .deb, for the upgrade;
#   - the release tests (deploy/packaging/*_test.go, -tags release): checksums,
#     SBOM, tarballs, the .deb in a fresh Debian root (debootstrap), the
#     upgrade, the image archives, the README's docker run becoming healthy
#     with configs/minimal.yaml, testssl.sh on both listeners, and the
#     single-relay compose stack.
# Needs root, a Docker engine, debootstrap, testssl.sh and openssl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
say() { echo "release-check.sh: $*" >&2; }

version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/smarthost/Chart.yaml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The source SBOM reads every module of the graph; downloading them all
# adds their sums to go.sum, which the release must not see changed.
cp go.sum "$work/go.sum"
go mod download all
cp "$work/go.sum" go.sum
say "scripts/release.sh $version, twice, and an earlier version's .deb"
DIST=$work/dist scripts/release.sh "$version" >/dev/null
DIST=$work/again NO_IMAGES=1 scripts/release.sh "$version" >/dev/null
DIST=$work/old NO_IMAGES=1 NO_OPENSSL=1 ARCHS=amd64 scripts/release.sh 0.0.1 >/dev/null
if ! diff <(grep -v '\.image\.tar$' "$work/dist/SHA256SUMS") "$work/again/SHA256SUMS" >&2; then
  say "two builds of one commit differ (above): the release is not reproducible"
  exit 1
fi

say "the release tests (go test -tags release ./deploy/packaging/)"
SMARTHOST_DIST=$work/dist SMARTHOST_DIST_OLD=$work/old SMARTHOST_VERSION=$version \
  go test -tags release -count=1 -timeout 30m ./deploy/packaging/ "$@"
