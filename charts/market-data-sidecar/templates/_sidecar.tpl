{{/*
Named templates for a store chart that runs the sidecar in its own pods.

Each takes this chart's root context. From a parent chart that has this chart as
a dependency, pass `(index .Subcharts "market-data-sidecar")`:

  containers:                       # initContainers: with nativeSidecar.enabled
    {{- include "market-data-sidecar.container" (index .Subcharts "market-data-sidecar") | nindent 4 }}
  env:                              # in the store container
    {{- include "market-data-sidecar.storeEnv" (index .Subcharts "market-data-sidecar") | nindent 4 }}
  volumes:
    {{- include "market-data-sidecar.volumes" (index .Subcharts "market-data-sidecar") | nindent 4 }}

See docs/deployment.md.
*/}}

{{/* The sidecar container, one list item for `containers:` or `initContainers:`. */}}
{{- define "market-data-sidecar.container" -}}
{{- $v := .Values -}}
{{- $s := $v.sidecar -}}
- name: {{ $s.name }}
  image: {{ printf "%s:%s" $s.image.repository (default .Chart.AppVersion $s.image.tag | toString) | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  {{- if $v.nativeSidecar.enabled }}
  # A native sidecar: starts before the store, stops after it.
  restartPolicy: Always
  {{- end }}
  {{- with $s.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: sidecar
      containerPort: {{ $s.port | int }}
      protocol: TCP
  env:
    {{- include "market-data-sidecar.env" . | nindent 4 }}
  {{- with $s.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # Startup and liveness use /livez, which never depends on the database, disk
  # or queues: a database outage makes the pod unready, it does not restart it.
  startupProbe:
    httpGet:
      path: /livez
      port: sidecar
    {{- toYaml $s.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /livez
      port: sidecar
    {{- toYaml $s.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidecar
    {{- toYaml $s.probes.readiness | nindent 4 }}
  {{- if and (not $v.nativeSidecar.enabled) (gt (int $s.preStopDelaySeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["python", "-c", "import time; time.sleep({{ $s.preStopDelaySeconds | int }})"]
  {{- end }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $s.securityContext | nindent 4 }}
  volumeMounts:
    - name: sidecar-tmp
      mountPath: /tmp
    {{- if $v.dataVolume.enabled }}
    - name: {{ $v.dataVolume.name }}
      mountPath: {{ $v.dataVolume.sidecarMountPath }}
      readOnly: true
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The sidecar's environment. Plain settings are inline values; the database URL,
token and targets (which hold signing secrets) only ever come from a Secret.
*/}}
{{- define "market-data-sidecar.env" -}}
{{- $v := .Values -}}
{{- $s := $v.sidecar -}}
- name: SIDECAR_HOST
  value: {{ $s.host | quote }}
- name: SIDECAR_PORT
  value: {{ $s.port | int | quote }}
- name: SIDECAR_SERVICE_NAME
  value: {{ $s.serviceName | quote }}
# This sidecar's member name in a fleet scope: the pod name, even with hostNetwork.
- name: SIDECAR_INSTANCE
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: SIDECAR_STORE_METRICS_URL
  value: {{ include "market-data-sidecar.storeMetricsUrl" . | quote }}
{{- $diskPaths := $s.diskPaths }}
{{- if and (kindIs "invalid" $diskPaths) $v.dataVolume.enabled }}
{{- $diskPaths = list $v.dataVolume.sidecarMountPath }}
{{- end }}
{{- if not (kindIs "invalid" $diskPaths) }}
- name: SIDECAR_DISK_PATHS
  value: {{ toJson $diskPaths | quote }}
{{- end }}
- name: SIDECAR_QUEUE_CAPACITY
  value: {{ $v.coordinatorCapacity | int | quote }}
{{- with $s.queueCapacities }}
- name: SIDECAR_QUEUE_CAPACITIES
  value: {{ toJson . | quote }}
{{- end }}
- name: SIDECAR_CHECK_INTERVAL
  value: {{ $s.checkInterval | toString | quote }}
- name: SIDECAR_CHECK_TIMEOUT
  value: {{ $s.checkTimeout | toString | quote }}
{{- range $check := list "database" "disk" "queue" }}
{{- $schedule := index ($s.checks | default dict) $check | default dict }}
{{- range $key, $suffix := dict "interval" "CHECK_INTERVAL" "timeout" "CHECK_TIMEOUT" "rise" "RISE" "fall" "FALL" }}
{{- $value := index $schedule $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "SIDECAR_%s_%s" (upper $check) $suffix }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
- name: SIDECAR_DATABASE_ROLE
  value: {{ $s.databaseRole | default "primary" | quote }}
- name: SIDECAR_LOG_FORMAT
  value: {{ $s.logFormat | quote }}
- name: SIDECAR_READY_WHEN_DEGRADED
  value: {{ $s.readyWhenDegraded | toString | quote }}
{{- if not (kindIs "invalid" $s.synthesizeFeedback) }}
- name: SIDECAR_SYNTHESIZE_FEEDBACK
  value: {{ $s.synthesizeFeedback | toString | quote }}
{{- end }}
{{- range $name, $value := $s.extraSettings }}
- name: {{ printf "SIDECAR_%s" (upper $name) }}
  value: {{ ternary (toJson $value) (toString $value) (or (kindIs "map" $value) (kindIs "slice" $value)) | quote }}
{{- end }}
{{- $existing := $v.secrets.existingSecret }}
{{- if or $existing $v.secrets.databaseUrl }}
- name: SIDECAR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "market-data-sidecar.credentialsSecretName" . }}
      key: {{ $v.secrets.keys.databaseUrl }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- if or $existing $v.secrets.token }}
- name: SIDECAR_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "market-data-sidecar.credentialsSecretName" . }}
      key: {{ $v.secrets.keys.token }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- if $s.targets }}
- name: SIDECAR_TARGETS
  valueFrom:
    secretKeyRef:
      name: {{ include "market-data-sidecar.secretName" . }}
      key: {{ $v.secrets.keys.targets }}
{{- else if $existing }}
- name: SIDECAR_TARGETS
  valueFrom:
    secretKeyRef:
      name: {{ $existing }}
      key: {{ $v.secrets.keys.targets }}
      optional: true
{{- end }}
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "market-data-sidecar.storeMetricsUrl" -}}
{{- if kindIs "invalid" .Values.sidecar.storeMetricsUrl }}
{{- printf "http://127.0.0.1:%d/metrics" (.Values.store.port | int) }}
{{- else }}
{{- .Values.sidecar.storeMetricsUrl }}
{{- end }}
{{- end }}

{{/*
The store's side of the wiring: push feedback to the sidecar over localhost,
with the same coordinator capacity the sidecar computes watermarks from.
*/}}
{{- define "market-data-sidecar.storeEnv" -}}
- name: MDS_FB_ENABLE_HTTP_BROADCAST
  value: "true"
- name: MDS_FB_HTTP_ENDPOINT
  value: {{ printf "http://127.0.0.1:%d/feedback" (.Values.sidecar.port | int) | quote }}
- name: MDS_COORDINATOR_CAPACITY
  value: {{ .Values.coordinatorCapacity | int | quote }}
{{- end }}

{{/* Volumes the sidecar container needs besides the store's data volume. */}}
{{- define "market-data-sidecar.volumes" -}}
- name: sidecar-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
