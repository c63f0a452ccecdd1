#!/usr/bin/env bash
# Builds the release binary: one static executable, no shared libraries.
#
#   scripts/build.sh [-o PATH] [--openssl] [--version V] [--arch amd64|arm64]
#
# Reproducible: the same commit gives the same bytes (-trimpath, no build
# id, no VCS stamp; the build time named in the binary is the commit's,
# or $SOURCE_DATE_EPOCH).
#
# The default is the pure-Go build (CGO_ENABLED=0): no C code at all, Go's
# constant-time RSA; it is what the image ships. --openssl is the opt-in
# variant whose DKIM RSA signatures come from OpenSSL's libcrypto, linked in
# statically (cgo, -tags openssl): RSA-2048 about four times faster, at the
# price of C code in the process and a libcrypto that gets its fixes only
# when the binary is rebuilt (docs/security.md). It needs gcc and
# libssl-dev at build time, nothing at run time. `smarthost version` says
# which one is running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

out=smarthost openssl=0 version=${VERSION:-dev} arch=$(go env GOARCH)
while [ $# -gt 0 ]; do
  case $1 in
    -o) out=$2; shift ;;
    --openssl) openssl=1 ;;
    --pure-go) openssl=0 ;; # the default; kept for older scripts
    --version) version=$2; shift ;;
    --arch) arch=$2; shift ;;
    *) echo "usage: scripts/build.sh [-o PATH] [--openssl] [--version V] [--arch amd64|arm64]" >&2; exit 2 ;;
  esac
  shift
done
commit=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
built=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w -buildid= -X main.version=$version -X main.commit=$commit -X main.built=$built"
export GOOS=linux GOARCH=$arch GOFLAGS="${GOFLAGS:-} -buildvcs=false"

if [ "$openssl" = 0 ]; then
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" ./cmd/smarthost
else
  if [ "$arch" != "$(go env GOHOSTARCH)" ]; then
    echo "build.sh: --openssl builds for this machine's architecture only" >&2
    exit 1
  fi
  if ! command -v gcc >/dev/null || [ ! -e "$(gcc -print-file-name=libcrypto.a)" ]; then
    echo "build.sh: --openssl needs gcc and libssl-dev (apt-get install gcc libssl-dev)" >&2
    exit 1
  fi
  # netgo and osusergo keep name and user lookups in Go, so that nothing
  # asks glibc's NSS for shared libraries at run time. The linker warns
  # that libcrypto *could* call dlopen and getaddrinfo (DSO engines, BIO
  # sockets); the signer uses neither, so those warnings are dropped.
  CGO_ENABLED=1 go build -trimpath -tags openssl,netgo,osusergo \
    -ldflags "$ldflags -linkmode external -extldflags '-static -Wl,--build-id=none'" -o "$out" ./cmd/smarthost 2>&1 |
    { grep -v -e 'statically linked applications requires at runtime' -e 'libcrypto.a(libcrypto-lib-' \
        -e '^# github.com/smarthost/smarthost/cmd/smarthost$' || true; } >&2
fi
# A program interpreter (ld.so) in the headers means shared libraries.
if readelf -l "$out" | grep -q INTERP; then
  echo "build.sh: $out is not statically linked" >&2
  exit 1
fi
echo "$out"
