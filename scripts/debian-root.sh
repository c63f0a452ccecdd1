#!/usr/bin/env bash
# Prints the path of a tarball of a minimal Debian root (debootstrap
# --variant=minbase, with the packages named), made once per Debian release
# and package list and kept in ~/.cache/smarthost-test/: the base of the
# stand-in images, and (with systemd and procps, as any Debian system that
# runs services has them) the fresh machine the .deb is installed on in the
# release tests.
#
#   scripts/debian-root.sh [RELEASE [PKG,PKG...]]        default: bookworm
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
release=${1:-bookworm} include=${2:-}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test"
out=$cache/debian-$release-minbase${include:+-${include//,/-}}.tar
if [ ! -s "$out" ]; then
  echo "debian-root.sh: debootstrap $release ${include:+with $include }(once)" >&2
  mkdir -p "$cache"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase ${include:+--include="$include"} "$release" "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf "$out.tmp" . && mv "$out.tmp" "$out"
fi
echo "$out"
