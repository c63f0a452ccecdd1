#!/usr/bin/env bash
# Builds the smarthost image without a registry: the static binary is built
# here (scripts/build.sh), and packed by the Dockerfile's "image" stage,
# taken from the Dockerfile as it is, on an empty base.
#
#   scripts/image.sh [--openssl] [-t TAG]        default tag smarthost:latest
#
# With a registry, `docker build .` builds the same image, with the binary
# built in a golang builder pinned by digest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

tag=smarthost:latest rsa=go
while [ $# -gt 0 ]; do
  case $1 in
    -t) tag=$2; shift ;;
    --openssl) rsa=openssl ;;
    *) echo "usage: scripts/image.sh [--openssl] [-t TAG]" >&2; exit 2 ;;
  esac
  shift
done
version=$(git describe --tags --always 2>/dev/null || echo dev)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/etc/ssl/certs" "$root/var/lib/smarthost/queue" "$root/var/lib/smarthost/dkim" "$root/etc/smarthost"
flags=(--version "$version")
openssl_version=
if [ "$rsa" = openssl ]; then
  flags+=(--openssl)
  openssl_version=$(dpkg-query -W -f '${Version}' libssl-dev)
fi
COMMIT=$commit scripts/build.sh -o "$root/smarthost" "${flags[@]}" >/dev/null
# Debian's CA bundle as shipped (Mozilla's list), for upstream TLS; not this
# machine's /etc/ssl/certs, which may hold local additions.
cat /usr/share/ca-certificates/mozilla/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
{
  echo "FROM scratch AS build"
  echo "COPY rootfs /out/rootfs"
  sed -n '/^# --- image:/,$p' Dockerfile
} > "$ctx/Dockerfile"
docker build -q -t "$tag" --build-arg VERSION="$version" --build-arg COMMIT="$commit" --build-arg RSA="$rsa" \
  --build-arg OPENSSL_VERSION="$openssl_version" "$ctx" >/dev/null
echo "$tag"
