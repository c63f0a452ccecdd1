# smarthost: the static release binary on a distroless base, running as nobody.
#   docker build -t smarthost .                          # RSA signatures by libcrypto, linked in
#   docker build --build-arg RSA=go -t smarthost .       # pure Go, no C code (docs/security.md)
#   docker run -v smarthost-queue:/var/lib/smarthost -v ./smarthost.yaml:/etc/smarthost/smarthost.yaml:ro -p 587:587 smarthost
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG RSA=openssl
RUN scripts/build.sh -o /out/smarthost --version "${VERSION}" $([ "${RSA}" = go ] && echo --pure-go) \
 && mkdir -p /out/var/lib/smarthost/queue /out/var/lib/smarthost/dkim

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/smarthost /usr/local/bin/smarthost
COPY --from=build --chown=65532:65532 /out/var/lib/smarthost /var/lib/smarthost
USER 65532:65532
VOLUME ["/var/lib/smarthost"]
EXPOSE 587 465 9587
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/smarthost"]
CMD ["serve", "--config", "/etc/smarthost/smarthost.yaml"]
