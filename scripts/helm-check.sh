#!/usr/bin/env bash
# Checks the Helm chart offline: with its defaults `helm template` (and so
# `helm install`) must stop with the `required` message that names what is
# missing; with the chart README's minimal values it renders, passes helm
# lint --strict and kube-score, and the ConfigMap and Secrets it renders,
# written out as the pod sees them, pass `smarthost check-config`. Then the
# parts the deployment relies on: the StatefulSet's volume per pod, the
# preStop drain, the probes, the disruption budget, the ServiceMonitor, the
# generated peer account and DKIM key. helm and kube-score are built from
# the Go module proxy once per version (scripts/tools.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin
helm=$(scripts/tools.sh helm)
kube_score=$(scripts/tools.sh kube-score)
chart=deploy/helm/smarthost
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "helm-check.sh: $*" >&2; exit 1; }

# The minimal values: the chart README's first yaml block, as users copy it.
awk '/^```yaml$/ && !done { on = 1; next } on && /^```$/ { on = 0; done = 1 } on' "$chart/README.md" > "$out/minimal.yaml"
grep -q '^tlsSecret:' "$out/minimal.yaml" || fail "no minimal values found in $chart/README.md"

# Defaults: stop before any pod exists, saying what is missing.
if "$helm" template smarthost "$chart" > "$out/none.yaml" 2> "$out/none.err"; then fail "the defaults render: helm install would start pods that crash-loop"; fi
grep -q 'tlsSecret: name the kubernetes.io/tls Secret' "$out/none.err" || fail "the defaults fail without naming tlsSecret: $(cat "$out/none.err")"
if "$helm" template smarthost "$chart" --set tlsSecret=x 2> "$out/pw.err" >/dev/null; then fail "no upstream password and it renders"; fi
grep -q 'secrets.upstream-password: ' "$out/pw.err" || fail "a missing upstream password is not named: $(cat "$out/pw.err")"

"$helm" lint --strict "$chart" -f "$out/minimal.yaml"
"$helm" template smarthost "$chart" -f "$out/minimal.yaml" > "$out/default.yaml"
"$helm" template smarthost "$chart" -f "$out/minimal.yaml" --set serviceMonitor.enabled=true,service.proxyProtocol=true,networkPolicy.enabled=false,podDisruptionBudget.enabled=false,existingSecret=mine,service.type=ClusterIP,dkim.generate.domain=,dkim.existingSecret=keys > "$out/other.yaml"
"$kube_score" score "$out/default.yaml"

grep -q 'kind: StatefulSet' "$out/default.yaml" || fail "no StatefulSet"
grep -q 'volumeClaimTemplates:' "$out/default.yaml" || fail "no volume per pod"
grep -q 'command: \["/smarthost", "drain", "--config", "/etc/smarthost/smarthost.yaml"' "$out/default.yaml" || fail "preStop does not drain"
grep -q 'path: /readyz' "$out/default.yaml" || fail "no readiness probe on /readyz"
grep -q 'path: /healthz' "$out/default.yaml" || fail "no liveness probe on /healthz"
grep -q 'kind: PodDisruptionBudget' "$out/default.yaml" || fail "no PodDisruptionBudget"
grep -q 'kind: ServiceMonitor' "$out/other.yaml" || fail "no ServiceMonitor when enabled"
grep -q 'proxy_protocol: true' "$out/other.yaml" || fail "service.proxyProtocol does not reach the listeners"
grep -q 'handoff:' "$out/default.yaml" || fail "no queue.handoff in the configuration"
grep -q 'image: "smarthost:'"$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$chart/Chart.yaml")"'"' "$out/default.yaml" || fail "the default tag is not the appVersion"
grep -q 'secretName: keys' "$out/other.yaml" || fail "dkim.existingSecret is not mounted"
if grep -q 'name: smarthost$' <(grep -A3 'kind: Secret' "$out/other.yaml"); then fail "a Secret made though existingSecret is set"; fi

# The rendered configuration and secrets, where the pod has them (below
# $out/root), must pass check-config, with a test certificate.
root=$out/root
/usr/bin/python3 - "$out/default.yaml" "$root" <<'PY'
import os, sys, yaml
src, root = sys.argv[1:]
seen = set()
for doc in yaml.safe_load_all(open(src)):
    if not doc:
        continue
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind == "ConfigMap" and name == "smarthost":
        dst, files = "etc/smarthost", doc["data"]
    elif kind == "Secret" and name == "smarthost":
        dst, files = "run/secrets/smarthost", doc["stringData"]
    elif kind == "Secret" and name == "smarthost-dkim":
        dst, files = "etc/smarthost/dkim", doc["stringData"]
    else:
        continue
    seen.add((kind, name))
    os.makedirs(os.path.join(root, dst), exist_ok=True)
    for k, v in files.items():
        open(os.path.join(root, dst, k), "w").write(v)
if len(seen) != 3:
    sys.exit("rendered: %s; want the ConfigMap, the Secret and the DKIM Secret" % sorted(seen))
users = yaml.safe_load(open(os.path.join(root, "run/secrets/smarthost/users.yaml")))["users"]
peer = users.get("relay-peer", {})
if peer.get("class") != "peers" or not peer.get("password_hash", "").startswith("$2"):
    sys.exit("the users file has no peer account of class peers: %r" % users)
PY
mkdir -p "$root/etc/smarthost/tls" "$root/var/lib/smarthost"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=relay.example.com \
  -keyout "$root/etc/smarthost/tls/tls.key" -out "$root/etc/smarthost/tls/tls.crt" 2>/dev/null
sed -i -e "s|/run/secrets/smarthost/|$root/run/secrets/smarthost/|g" -e "s|/etc/smarthost/|$root/etc/smarthost/|g" \
  -e "s|/var/lib/smarthost/|$root/var/lib/smarthost/|g" "$root/etc/smarthost/smarthost.yaml"
go build -o "$out/smarthost" ./cmd/smarthost
"$out/smarthost" check-config --config "$root/etc/smarthost/smarthost.yaml" >&2 ||
  fail "the rendered configuration does not pass check-config"
echo "helm-check.sh: chart ok" >&2
