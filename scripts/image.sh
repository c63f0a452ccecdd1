#!/usr/bin/env bash
# Builds the smarthost image without a registry: the static binary is built
# here (scripts/build.sh), and packed by the Dockerfile's "image" stage,
# taken from the Dockerfile as it is, on an empty base. The base is
# `scratch` and nothing in it runs at build time, so the arm64 image needs
# no emulation.
#
#   scripts/image.sh [--openssl] [--arch amd64|arm64] [--version V] [--binary FILE] [-t TAG]...
#
# Tags: smarthost:latest and smarthost:VERSION (the Helm chart's default
# tag is its appVersion, the release's version), or those given with -t.
# --binary packs a binary already built (scripts/release.sh).
#
# With a registry, `docker build .` builds the same image, with the binary
# built in a golang builder pinned by digest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

tags=() rsa=go arch=$(go env GOARCH) binary=
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/smarthost/Chart.yaml)
while [ $# -gt 0 ]; do
  case $1 in
    -t) tags+=("$2"); shift ;;
    --openssl) rsa=openssl ;;
    --arch) arch=$2; shift ;;
    --version) version=$2; shift ;;
    --binary) binary=$2; shift ;;
    *) echo "usage: scripts/image.sh [--openssl] [--arch amd64|arm64] [--version V] [--binary FILE] [-t TAG]..." >&2; exit 2 ;;
  esac
  shift
done
[ ${#tags[@]} -gt 0 ] || tags=(smarthost:latest "smarthost:$version")
commit=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/etc/ssl/certs" "$root/var/lib/smarthost/queue" "$root/var/lib/smarthost/dkim" "$root/etc/smarthost"
openssl_version=
if [ -n "$binary" ]; then
  install -m 0755 "$binary" "$root/smarthost"
  if "$root/smarthost" version 2>/dev/null | grep -q 'DKIM RSA signatures: OpenSSL'; then rsa=openssl; fi
else
  flags=(--version "$version" --arch "$arch")
  [ "$rsa" = openssl ] && flags+=(--openssl)
  COMMIT=$commit SOURCE_DATE_EPOCH=$epoch scripts/build.sh -o "$root/smarthost" "${flags[@]}" >/dev/null
fi
[ "$rsa" = openssl ] && openssl_version=$(dpkg-query -W -f '${Version}' libssl-dev)
# Debian's CA bundle as shipped (Mozilla's list), for upstream TLS; not this
# machine's /etc/ssl/certs, which may hold local additions.
cat /usr/share/ca-certificates/mozilla/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
# The same times in every build.
find "$root" -exec touch -h -d "@$epoch" {} +
# The image stage as it is, but copying from this context instead of the
# build stage, and copying first: Docker's classic builder loses the
# platform of a scratch image across a metadata step (LABEL), and then
# refuses a COPY into it for another architecture.
stage=$(sed -n '/^# --- image:/,$p' Dockerfile)
{
  echo "$stage" | grep '^FROM '
  echo "$stage" | grep '^COPY --from=build ' | sed 's|^\(COPY\) --from=build \(.*\)/out/rootfs/|\1 \2rootfs/|'
  echo "$stage" | grep -v -e '^FROM ' -e '^COPY --from=build '
} > "$ctx/Dockerfile"
tagargs=()
for t in "${tags[@]}"; do tagargs+=(-t "$t"); done
docker build -q --platform "linux/$arch" "${tagargs[@]}" --build-arg VERSION="$version" --build-arg COMMIT="$commit" \
  --build-arg CREATED="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)" --build-arg RSA="$rsa" \
  --build-arg OPENSSL_VERSION="$openssl_version" "$ctx" >/dev/null
printf '%s\n' "${tags[@]}"
