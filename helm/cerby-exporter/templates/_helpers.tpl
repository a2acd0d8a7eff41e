{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "cerby-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
*/}}
{{- define "cerby-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The port the exporter listens on in the container: the image's EXPOSE and the exporter's
default. Everything that needs it (the listen address, the container port) takes it from here.
*/}}
{{- define "cerby-exporter.port" -}}
10366
{{- end }}

{{- define "cerby-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cerby-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cerby-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cerby-exporter.labels" -}}
helm.sh/chart: {{ include "cerby-exporter.chart" . }}
{{ include "cerby-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: cerby-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cerby-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cerby-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cerby-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Whether the pod gets an API key file: from an existing Secret or from one the chart creates.
*/}}
{{- define "cerby-exporter.hasApiKey" -}}
{{- if or .Values.existingSecret .Values.apiKey }}true{{ end }}
{{- end }}

{{- define "cerby-exporter.secretName" -}}
{{- .Values.existingSecret | default (include "cerby-exporter.fullname" .) }}
{{- end }}

{{- define "cerby-exporter.secretKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKey }}{{ else }}api-key{{ end }}
{{- end }}

{{/*
Whether the pod gets a job-ID file. Outside demo mode always (an empty list makes a ConfigMap
that can be filled later); in demo mode only when IDs were given.
*/}}
{{- define "cerby-exporter.hasJobIds" -}}
{{- if or (not .Values.demo) .Values.existingJobIdsConfigMap .Values.jobIds }}true{{ end }}
{{- end }}

{{- define "cerby-exporter.jobIdsConfigMapName" -}}
{{- .Values.existingJobIdsConfigMap | default (printf "%s-job-ids" (include "cerby-exporter.fullname" . | trunc 55 | trimSuffix "-")) }}
{{- end }}

{{- define "cerby-exporter.jobIdsConfigMapKey" -}}
{{- if .Values.existingJobIdsConfigMap }}{{ .Values.existingJobIdsConfigMapKey }}{{ else }}job-ids{{ end }}
{{- end }}

{{/*
Whether the webhook receiver is on: it is when a keys file is mounted.
*/}}
{{- define "cerby-exporter.webhookEnabled" -}}
{{- if .Values.webhook.existingSecret }}true{{ end }}
{{- end }}

{{/*
The named port the webhook path is served on: its own when `webhook.port` is set.
*/}}
{{- define "cerby-exporter.webhookPortName" -}}
{{- if .Values.webhook.port }}webhook{{ else }}http{{ end }}
{{- end }}

{{- define "cerby-exporter.stateClaimName" -}}
{{- .Values.state.persistence.existingClaim | default (printf "%s-state" (include "cerby-exporter.fullname" . | trunc 57 | trimSuffix "-")) }}
{{- end }}

{{/*
The exporter's settings from `config`, one CERBY_* variable each: the key in upper snake case
(`maxJobs` is CERBY_MAX_JOBS). Empty and null values are left out, so the exporter keeps its
default; whole numbers are written as integers, whatever their size (no 1e+06).
*/}}
{{- define "cerby-exporter.configEnv" -}}
{{- range $key, $value := .Values.config }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
- name: {{ printf "CERBY_%s" (snakecase $key | upper) }}
  {{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Settings the exporter cannot start without, checked at render time so that a missing one fails
`helm install` with a sentence instead of a crash-looping pod.
*/}}
{{- define "cerby-exporter.validate" -}}
{{- if not .Values.demo }}
{{- if not (include "cerby-exporter.hasApiKey" .) }}
{{- fail "cerby-exporter: set existingSecret (name of a Secret holding the Cerby API key) or apiKey; or demo=true to try the chart without Cerby" }}
{{- end }}
{{- if not (or .Values.config.workspace .Values.config.apiUrl) }}
{{- fail "cerby-exporter: set config.workspace (e.g. acme for https://acme.cerby.com) or config.apiUrl; or demo=true to try the chart without Cerby" }}
{{- end }}
{{- end }}
{{- if and .Values.state.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "cerby-exporter: state.persistence needs replicaCount 1: the state file (SQLite) has one writer" }}
{{- end }}
{{- if and (or .Values.webhook.ingress.enabled .Values.webhook.port) (not .Values.webhook.existingSecret) }}
{{- fail "cerby-exporter: webhook.ingress and webhook.port need webhook.existingSecret, the Secret holding the webhook keys file" }}
{{- end }}
{{- if eq (toString .Values.webhook.port) (include "cerby-exporter.port" .) }}
{{- fail (printf "cerby-exporter: webhook.port must differ from the metrics port %s (leave it null to serve the webhook there)" (include "cerby-exporter.port" .)) }}
{{- end }}
{{- if and .Values.webConfig.tls (not .Values.webConfig.existingSecret) }}
{{- fail "cerby-exporter: webConfig.tls needs webConfig.existingSecret, the Secret holding the web config file and its certificate" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (kindIs "map" .) (eq (toString .name) "CERBY_API_KEY") (hasKey . "value") }}
{{- fail "cerby-exporter: do not put the API key in extraEnv (it would be readable in the pod spec); use existingSecret or apiKey" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A probe from values. Helm merges a user's probe into the default one, so a probe given with
another handler (tcpSocket, exec, grpc) also carries the default httpGet, and a probe may have
only one: the other handler wins. An httpGet probe uses HTTPS when the web config turns TLS on.
*/}}
{{- define "cerby-exporter.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if or $probe.tcpSocket $probe.exec $probe.grpc }}
{{- $_ := unset $probe "httpGet" }}
{{- else if and .tls $probe.httpGet }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
