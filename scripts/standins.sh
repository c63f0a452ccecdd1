#!/usr/bin/env bash
# Builds local stand-ins, under the same names, for the third-party images
# docker-compose.yml uses, where no container registry can be reached (as
# on our build machines): a Debian base made with debootstrap and `docker
# import`, redis and haproxy from Debian's packages on it
# (deploy/standins/), and Mailpit built from the Go module proxy. An image
# already present is left alone, so on a machine that can pull, the real
# ones are used. Each stand-in carries the label org.smarthost.standin, and
# the script ends by naming them (on standard output), so that nobody takes
# them for the public images:
#   docker images --filter label=org.smarthost.standin
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin
MAILPIT_VERSION=v1.33.1
have() { docker image inspect "$1" >/dev/null 2>&1; }
say() { echo "standins.sh: $*" >&2; }

if ! have debian:bookworm-slim; then
  say "debian:bookworm-slim: a local stand-in from debootstrap (scripts/debian-root.sh)"
  docker import --change 'CMD ["bash"]' \
    --change 'LABEL org.smarthost.standin="a local stand-in built by scripts/standins.sh, not the public image"' "$(scripts/debian-root.sh bookworm)" debian:bookworm-slim >/dev/null
fi
if ! have redis:7.0; then
  say "redis:7.0 from Debian's redis-server"
  docker build -q -t redis:7.0 deploy/standins/redis >/dev/null
fi
if ! have haproxy:2.6; then
  say "haproxy:2.6 from Debian's haproxy"
  docker build -q -t haproxy:2.6 deploy/standins/haproxy >/dev/null
fi
if ! have "axllent/mailpit:$MAILPIT_VERSION"; then
  say "axllent/mailpit:$MAILPIT_VERSION from the Go module proxy"
  ctx=$(mktemp -d)
  GOBIN=$ctx CGO_ENABLED=0 GOFLAGS= go install "github.com/axllent/mailpit@$MAILPIT_VERSION"
  mkdir -p "$ctx/tmp" && chmod 1777 "$ctx/tmp"
  cp deploy/standins/mailpit/Dockerfile "$ctx/"
  docker build -q -t "axllent/mailpit:$MAILPIT_VERSION" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
for image in debian:bookworm-slim redis:7.0 haproxy:2.6 "axllent/mailpit:$MAILPIT_VERSION"; do
  if [ -n "$(docker image inspect --format '{{index .Config.Labels "org.smarthost.standin"}}' "$image" 2>/dev/null)" ]; then
    echo "$image: a local stand-in, not the public image"
  fi
done
