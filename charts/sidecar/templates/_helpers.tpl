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

{{/* The sidecar's image: the one `make image` builds (sidecar:VERSION), the tag defaulting to the chart's
appVersion, which is the package's version. */}}
{{- define "sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* "true" when the sidecar runs as a native sidecar container (an init container with restartPolicy Always,
Kubernetes 1.29+): started and ready before the app, stopped after it. sidecar.native: auto picks it when the
cluster (or --kube-version) is 1.29 or later; true on an older cluster is refused, since the kubelet would run
the sidecar as a plain init container that never completes. Mode daemonset has no app: never native. */}}
{{- define "sidecar.native" -}}
{{- $supported := semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version -}}
{{- $setting := toString .Values.sidecar.native -}}
{{- if eq .Values.mode "daemonset" -}}
false
{{- else if eq $setting "auto" -}}
{{- $supported -}}
{{- else if eq $setting "true" -}}
{{- if not $supported -}}
{{- fail (printf "sidecar.native=true needs Kubernetes 1.29 or later (native sidecar containers), not %s: set sidecar.native=false or auto" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}
