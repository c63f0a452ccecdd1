#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint --strict, helm template with the
# defaults and with every option turned the other way, kube-score on what
# renders (both built from the Go module proxy, once per machine), and the
# parts the deployment relies on: the StatefulSet's volume per pod, the
# preStop drain, the probes, the disruption budget, the ServiceMonitor.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin
HELM_VERSION=v3.22.0
KUBE_SCORE_VERSION=v1.20.0
tools="${XDG_CACHE_HOME:-$HOME/.cache}/smarthost-test/tools"
[ -x "$tools/helm-$HELM_VERSION" ] || {
  echo "helm-check.sh: building helm $HELM_VERSION" >&2
  GOBIN="$tools/tmp" GOFLAGS= go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" && mv "$tools/tmp/helm" "$tools/helm-$HELM_VERSION"
}
[ -x "$tools/kube-score-$KUBE_SCORE_VERSION" ] || {
  echo "helm-check.sh: building kube-score $KUBE_SCORE_VERSION" >&2
  GOBIN="$tools/tmp" GOFLAGS= go install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" &&
    mv "$tools/tmp/kube-score" "$tools/kube-score-$KUBE_SCORE_VERSION"
}
helm=$tools/helm-$HELM_VERSION
chart=deploy/helm/smarthost
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$helm" lint --strict "$chart"
"$helm" template smarthost "$chart" > "$out/default.yaml"
"$helm" template smarthost "$chart" --set serviceMonitor.enabled=true,service.proxyProtocol=true,networkPolicy.enabled=false,podDisruptionBudget.enabled=false,existingSecret=mine,service.type=ClusterIP > "$out/other.yaml"
"$tools/kube-score-$KUBE_SCORE_VERSION" score "$out/default.yaml"

fail() { echo "helm-check.sh: $*" >&2; exit 1; }
grep -q 'kind: StatefulSet' "$out/default.yaml" || fail "no StatefulSet"
grep -q 'volumeClaimTemplates:' "$out/default.yaml" || fail "no volume per pod"
grep -q 'command: \["/smarthost", "drain", "--config", "/etc/smarthost/smarthost.yaml"' "$out/default.yaml" || fail "preStop does not drain"
grep -q 'path: /readyz' "$out/default.yaml" || fail "no readiness probe on /readyz"
grep -q 'path: /healthz' "$out/default.yaml" || fail "no liveness probe on /healthz"
grep -q 'kind: PodDisruptionBudget' "$out/default.yaml" || fail "no PodDisruptionBudget"
grep -q 'kind: ServiceMonitor' "$out/other.yaml" || fail "no ServiceMonitor when enabled"
grep -q 'proxy_protocol: true' "$out/other.yaml" || fail "service.proxyProtocol does not reach the listeners"
grep -q 'handoff:' "$out/default.yaml" || fail "no queue.handoff in the configuration"
if grep -q 'kind: Secret' "$out/other.yaml"; then fail "a Secret made though existingSecret is set"; fi
echo "helm-check.sh: chart ok" >&2
