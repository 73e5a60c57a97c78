{{/*
Names and labels. Every helper takes this chart's root context (or, from a
parent chart, `index .Subcharts "market-data-sidecar"`), so names computed from
a store chart match the ones this chart renders.
*/}}

{{- define "market-data-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "market-data-sidecar.fullname" -}}
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

{{- define "market-data-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "market-data-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "market-data-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "market-data-sidecar.labels" -}}
helm.sh/chart: {{ include "market-data-sidecar.chart" . }}
{{ include "market-data-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: market-data-store
{{- end }}

{{- define "market-data-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "market-data-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The chart's own Secret. It exists when there is secret material in the values:
targets (always JSON in a Secret: they carry signing keys), or a database URL /
token given inline rather than through secrets.existingSecret.
*/}}
{{- define "market-data-sidecar.secretName" -}}
{{- include "market-data-sidecar.fullname" . }}
{{- end }}

{{- define "market-data-sidecar.inlineCredentials" -}}
{{- if and (not .Values.secrets.existingSecret) (or .Values.secrets.databaseUrl .Values.secrets.token) }}true{{- end }}
{{- end }}

{{- define "market-data-sidecar.secretEnabled" -}}
{{- if or .Values.sidecar.targets (include "market-data-sidecar.inlineCredentials" .) }}true{{- end }}
{{- end }}

{{/* The Secret that SIDECAR_DATABASE_URL and SIDECAR_TOKEN come from. */}}
{{- define "market-data-sidecar.credentialsSecretName" -}}
{{- default (include "market-data-sidecar.secretName" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "market-data-sidecar.validate" -}}
{{- if and .Values.secrets.existingSecret (or .Values.secrets.databaseUrl .Values.secrets.token) }}
{{- fail "secrets: set either secrets.existingSecret or secrets.databaseUrl/secrets.token, not both" }}
{{- end }}
{{- if and .Values.nativeSidecar.enabled (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "nativeSidecar.enabled needs Kubernetes >= 1.29 (target: %s); set nativeSidecar.enabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if eq (int .Values.store.port) (int .Values.sidecar.port) }}
{{- fail "store.port and sidecar.port must differ: both containers share the pod's network" }}
{{- end }}
{{- end }}
