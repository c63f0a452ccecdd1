#!/usr/bin/env bash
# Makes a release into dist/ (or $DIST), offline once the Go modules and
# the tools are in their caches, and reproducibly: the same commit gives
# the same bytes (the images aside, whose creation time Docker sets).
#
#   scripts/release.sh VERSION          e.g. scripts/release.sh 0.3.0
#
# dist/ then holds:
#   smarthost_V_linux_amd64, smarthost_V_linux_arm64   static pure-Go binaries
#   smarthost-openssl_V_linux_amd64                     the OpenSSL variant
#   *.tar.gz       each binary with LICENSE, NOTICE, README.md, the example
#                  configurations and the systemd unit
#   smarthost_V_amd64.deb, smarthost_V_arm64.deb
#   smarthost_V_linux_amd64.image.tar, ..._arm64.image.tar   `docker load` them
#   smarthost_V.cdx.json   the SBOM (CycloneDX): the Go modules in the binary
#   smarthost_V_source.cdx.json   every module the source requires (tests' too)
#   SHA256SUMS
# NO_IMAGES=1 leaves the image archives out, NO_OPENSSL=1 the OpenSSL
# variant, and ARCHS="amd64" the other architecture (the release tests'
# earlier version needs only its amd64 .deb).
#
# Tools (nfpm, cyclonedx-gomod) come from the Go module proxy once, by
# version, into ~/.cache/smarthost-test/tools (scripts/tools.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin
[ $# = 1 ] || { echo "usage: scripts/release.sh VERSION" >&2; exit 2; }
version=${1#v}
case $version in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "release.sh: VERSION must look like 1.2.3 (got $1)" >&2; exit 2 ;;
esac
dist=${DIST:-dist}
case $dist in /*) ;; *) dist=$PWD/$dist ;; esac
nfpm=$(scripts/tools.sh nfpm)
cyclonedx=$(scripts/tools.sh cyclonedx-gomod)

commit=$(git rev-parse HEAD)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export COMMIT=$commit
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "release.sh: warning: the tree has changes that are not committed; the release names commit $commit" >&2
fi
# Offline: every module must already be in the cache (go mod download).
export GOFLAGS="-mod=readonly" GOPROXY=off GOTOOLCHAIN=local
rm -rf "$dist" && mkdir -p "$dist"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Binaries.
archs=${ARCHS:-amd64 arm64}
bins=()
for arch in $archs; do
  scripts/build.sh --arch "$arch" --version "$version" -o "$dist/smarthost_${version}_linux_$arch" >/dev/null
  bins+=("smarthost_${version}_linux_$arch")
done
if [ "${NO_OPENSSL:-}" != 1 ]; then
  scripts/build.sh --openssl --version "$version" -o "$dist/smarthost-openssl_${version}_linux_amd64" >/dev/null
  bins+=("smarthost-openssl_${version}_linux_amd64")
fi

# Tarballs: fixed order, owners and times; gzip without a name or time.
for b in "${bins[@]}"; do
  d=$stage/tar/$b
  install -d "$d/configs"
  install -m 0755 "$dist/$b" "$d/smarthost"
  install -m 0644 LICENSE NOTICE README.md "$d/"
  install -m 0644 configs/smarthost.service "$d/"
  install -m 0644 configs/minimal.yaml configs/example.yaml "$d/configs/"
  tar -C "$stage/tar" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    --format=gnu -cf - "$b" | gzip -9n > "$dist/$b.tar.gz"
done

# Debian packages: the unit as the tarball has it, with the binary in
# /usr/bin.
mkdir -p "$stage/deb"
sed 's|/usr/local/bin/smarthost|/usr/bin/smarthost|g' configs/smarthost.service > "$stage/deb/smarthost.service"
for arch in $archs; do
  # nfpm expands the environment in a few fields only: the rest is filled
  # in here.
  sed -e "s|\${VERSION}|$version|g" -e "s|\${ARCH}|$arch|g" -e "s|\${BIN}|$dist/smarthost_${version}_linux_$arch|g" \
    -e "s|\${STAGE}|$stage/deb|g" deploy/packaging/nfpm.yaml > "deploy/packaging/.nfpm-$arch.yaml"
  (cd deploy/packaging && "$nfpm" package --config ".nfpm-$arch.yaml" --packager deb --target "$dist/smarthost_${version}_$arch.deb" >/dev/null)
  rm -f "deploy/packaging/.nfpm-$arch.yaml"
done

# The SBOM: the modules linked into the binary, with their versions. The
# tool reads the commit from a plain Git repository: a clone of this one
# at the commit.
git clone -q --no-checkout "$PWD" "$stage/src" && git -C "$stage/src" checkout -q --detach "$commit"
# Two: the modules linked into the binary (what a scanner of the binary
# wants), and every module the source requires, tests' included.
(cd "$stage/src" && GOOS=linux GOARCH=amd64 CGO_ENABLED=0 "$cyclonedx" app -json -licenses=false -main cmd/smarthost \
  -output "$stage/sbom.json" . 2> "$stage/sbom.log" &&
  GOFLAGS=-mod=mod "$cyclonedx" mod -json -licenses=false -test -output "$stage/sbom-source.json" . 2>> "$stage/sbom.log") ||
  { cat "$stage/sbom.log" >&2; exit 1; }
# Its serial number and timestamp change at every run: fixed from the commit.
/usr/bin/python3 - "$commit" "$version" "$stage/sbom.json" "$dist/smarthost_${version}.cdx.json" \
  "$stage/sbom-source.json" "$dist/smarthost_${version}_source.cdx.json" <<'EOF'
import json, sys, uuid, datetime, os
commit, version = sys.argv[1:3]
def fix(src, dst):
  b = json.load(open(src))
  b["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, dst.rsplit("/", 1)[-1] + "@" + commit))
  when = datetime.datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), datetime.timezone.utc)
  b.setdefault("metadata", {})["timestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
  b["metadata"].get("component", {})["version"] = version
  with open(dst, "w") as f:
    json.dump(b, f, indent=2, sort_keys=True)
    f.write("\n")
for src, dst in zip(sys.argv[3::2], sys.argv[4::2]):
  fix(src, dst)
EOF

# Image archives, one per architecture, each tagged smarthost:VERSION.
# arm64 first, so that the tag names the amd64 image on this machine
# afterwards.
if [ "${NO_IMAGES:-}" != 1 ]; then
  for arch in arm64 amd64; do
    case " $archs " in *" $arch "*) ;; *) continue ;; esac
    scripts/image.sh --arch "$arch" --version "$version" --binary "$dist/smarthost_${version}_linux_$arch" \
      -t "smarthost:$version" >/dev/null
    docker save "smarthost:$version" > "$dist/smarthost_${version}_linux_$arch.image.tar"
  done
fi

(cd "$dist" && sha256sum -- * | grep -v ' SHA256SUMS$' > SHA256SUMS)
echo "$dist"
