# smarthost: one static binary on an empty base, as an unprivileged user.
#
#   docker build -t smarthost .                                  the pure-Go build (default)
#   docker build --build-arg RSA=openssl -t smarthost:openssl .  RSA signatures by a static libcrypto
#   docker run -d --name smarthost -p 587:587 -p 465:465 \
#     -v /etc/smarthost:/etc/smarthost:ro -v smarthost-data:/var/lib/smarthost smarthost
#
# Without a registry (our CI), scripts/image.sh builds the binary on the host
# and packs it with the "image" stage below, unchanged; scripts/release.sh
# does so for amd64 and arm64.
ARG GO_IMAGE=golang:1.26.2-bookworm@sha256:47ce5636e9936b2c5cbf708925578ef386b4f8872aec74a67bd13a627d242b19
FROM ${GO_IMAGE} AS build
ARG RSA=go
ARG VERSION=dev
ARG COMMIT=unknown
ARG SOURCE_DATE_EPOCH=0
RUN if [ "$RSA" = openssl ]; then apt-get update && apt-get install -y --no-install-recommends libssl-dev && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The root the image gets: the binary, Debian's CA bundle (for upstream
# TLS), and the spool's folder for the unprivileged user.
RUN mkdir -p /out/rootfs/etc/ssl/certs /out/rootfs/var/lib/smarthost/queue /out/rootfs/var/lib/smarthost/dkim /out/rootfs/etc/smarthost \
 && cp /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ \
 && COMMIT="$COMMIT" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" scripts/build.sh -o /out/rootfs/smarthost --version "$VERSION" $([ "$RSA" = openssl ] && echo --openssl) \
 && /out/rootfs/smarthost version | sed -n 's/^DKIM RSA signatures: //p' > /out/rsa-backend

# --- image: everything below is the image (scripts/image.sh packs it from its own context)
FROM scratch AS image
ARG VERSION=dev
ARG COMMIT=unknown
ARG RSA=go
ARG OPENSSL_VERSION=
ARG CREATED=
LABEL org.opencontainers.image.title="smarthost" \
      org.opencontainers.image.description="Authenticated mail submission relay (RFC 6409): AUTH, rate limits, DKIM, a durable queue, upstream failover" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/smarthost/smarthost" \
      org.smarthost.rsa="${RSA}" \
      org.smarthost.openssl="${OPENSSL_VERSION}"
# /var/lib/smarthost and everything below it belong to the image's user, so
# that a file:// outbox or any folder a configuration puts there can be
# made.
COPY --from=build /out/rootfs/smarthost /smarthost
COPY --from=build /out/rootfs/etc/ /etc/
COPY --from=build --chown=65532:65532 /out/rootfs/var/lib/ /var/lib/
USER 65532:65532
VOLUME ["/var/lib/smarthost"]
EXPOSE 587 465 9587
# No shell or curl in here: the binary asks /readyz itself, on the admin
# listener's default address (metrics.listen: 127.0.0.1:9587 unless the
# configuration moves it; a wildcard on that port works too).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/smarthost", "probe-ready", "http://127.0.0.1:9587/readyz"]
ENTRYPOINT ["/smarthost"]
CMD ["serve", "--config", "/etc/smarthost/smarthost.yaml"]
