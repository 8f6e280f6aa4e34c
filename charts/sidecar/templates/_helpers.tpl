{{/* The chart's name, trimmed to a DNS label. */}}
{{- define "sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The port of a "host:port" listen address: include "sidecar.port" .Values.config.admin.listen */}}
{{- define "sidecar.port" -}}
{{- splitList ":" (toString .) | last | int -}}
{{- end -}}

{{- define "sidecar.tlsSecret" -}}
{{- default (printf "%s-tls" (include "sidecar.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "sidecar.gossipService" -}}
{{- printf "%s-gossip" (include "sidecar.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* config with the headless Service added to gossip.join */}}
{{- define "sidecar.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.gossip.joinHeadlessService -}}
{{- $gossip := default dict $config.gossip -}}
{{- $port := include "sidecar.port" (default "0.0.0.0:7946" $gossip.listen) -}}
{{- $headless := printf "%s.%s.svc.cluster.local:%s" (include "sidecar.gossipService" .) .Release.Namespace $port -}}
{{- $join := default list $gossip.join -}}
{{- if not (has $headless $join) -}}
{{- $join = append $join $headless -}}
{{- end -}}
{{- $_ := set $gossip "join" $join -}}
{{- $_ := set $config "gossip" $gossip -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
