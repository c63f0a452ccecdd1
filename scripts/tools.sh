#!/usr/bin/env bash
# Prints the path of a release or test tool, building it from the Go
# module proxy the first time, once per version, into
# ~/.cache/smarthost-test/tools.
#
#   scripts/tools.sh nfpm|cyclonedx-gomod|helm|kube-score
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin
tools="${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test/tools"
case ${1:-} in
  nfpm)            pkg=github.com/goreleaser/nfpm/v2/cmd/nfpm v=v2.48.0 ;;
  cyclonedx-gomod) pkg=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod v=v1.10.0 ;;
  # helm v3.22.0 is served by the proxy but not approved for use.
  helm)            pkg=helm.sh/helm/v3/cmd/helm v=v3.21.4 ;;
  kube-score)      pkg=github.com/zegl/kube-score/cmd/kube-score v=v1.20.0 ;;
  *) echo "usage: scripts/tools.sh nfpm|cyclonedx-gomod|helm|kube-score" >&2; exit 2 ;;
esac
bin=$tools/$1-$v
if [ ! -x "$bin" ]; then
  echo "tools.sh: building $1 $v" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  GOBIN=$tmp GOFLAGS= GOPROXY="${GOPROXY_TOOLS:-$(go env GOPROXY)}" go install "$pkg@$v" >&2
  mkdir -p "$tools" && mv "$tmp/$1" "$bin"
fi
echo "$bin"
