# smarthost: a static binary on a distroless base, running as nobody.
#   docker build -t smarthost .
#   docker run -v smarthost-queue:/var/lib/smarthost -v ./smarthost.yaml:/etc/smarthost/smarthost.yaml:ro -p 587:587 smarthost
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/smarthost ./cmd/smarthost \
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
