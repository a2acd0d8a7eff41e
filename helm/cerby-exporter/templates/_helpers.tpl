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
