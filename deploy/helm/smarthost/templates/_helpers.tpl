{{- define "smarthost.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smarthost.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "smarthost.labels" -}}
app.kubernetes.io/name: {{ include "smarthost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "smarthost.selector" -}}
app.kubernetes.io/name: {{ include "smarthost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "smarthost.secretName" -}}
{{- default (include "smarthost.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* The configuration: the user's (values may use templates, such as the
peers Service's name), with what the pod serves set. */}}
{{- define "smarthost.config" -}}
{{- $proxy := .Values.service.proxyProtocol -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c "listeners" (list (dict "address" "0.0.0.0:2587" "mode" "starttls" "proxy_protocol" $proxy) (dict "address" "0.0.0.0:2465" "mode" "implicit" "proxy_protocol" $proxy) (dict "address" "0.0.0.0:3587" "mode" "starttls")) -}}
{{- $peers := dict "name" "peers" "url" (printf "smtp://%s-peers:587" (include "smarthost.fullname" .)) "tls" "required" "tls_verify" false "username" "relay-peer" "password_file" "/run/secrets/smarthost/peer-password" -}}
{{- $_ := set $c "upstreams" (append (default (list) $c.upstreams) $peers) -}}
{{- $q := default (dict) $c.queue -}}
{{- $_ := set $q "dir" "/var/lib/smarthost/queue" -}}
{{- $_ := set $q "handoff" (dict "upstreams" (list "peers")) -}}
{{- $_ := set $c "queue" $q -}}
{{- with .Values.dkim.generate.domain -}}
{{- $d := default (dict) $c.dkim -}}
{{- $domains := default (dict) $d.domains -}}
{{- $sel := $.Values.dkim.generate.selector -}}
{{- $_ := set $domains (lower .) (list (dict "selector" $sel "key_file" (printf "/etc/smarthost/dkim/%s.%s.key" (lower .) $sel))) -}}
{{- $_ := set $d "domains" $domains -}}
{{- $_ := set $c "dkim" $d -}}
{{- end -}}
{{- $m := default (dict) $c.metrics -}}
{{- $_ := set $m "listen" "0.0.0.0:9587" -}}
{{- $_ := set $c "metrics" $m -}}
{{- tpl (toYaml $c) . -}}
{{- end -}}

{{/* What a pod cannot start without: helm install stops here, naming it,
before any pod crash-loops. */}}
{{- define "smarthost.required" -}}
{{- $_ := required "tlsSecret: name the kubernetes.io/tls Secret that holds the relay's certificate (kubectl create secret tls smarthost-tls --cert=fullchain.pem --key=privkey.pem, or cert-manager's)" .Values.tlsSecret -}}
{{- if not .Values.existingSecret -}}
{{- $_ := required "secrets.upstream-password: the password of the upstream (config.upstreams), or name a Secret of your own in existingSecret" (index .Values.secrets "upstream-password") -}}
{{- end -}}
{{- $_ := required "config.hostname: the relay's name, as in its certificate" .Values.config.hostname -}}
{{- end -}}
