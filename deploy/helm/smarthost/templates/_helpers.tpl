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
{{- $q := default (dict) $c.queue -}}
{{- $_ := set $q "dir" "/var/lib/smarthost/queue" -}}
{{- $_ := set $c "queue" $q -}}
{{- $m := default (dict) $c.metrics -}}
{{- $_ := set $m "listen" "0.0.0.0:9587" -}}
{{- $_ := set $c "metrics" $m -}}
{{- tpl (toYaml $c) . -}}
{{- end -}}
