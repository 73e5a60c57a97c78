{{/* The market-data-store container of this chart's Deployment. */}}
{{- define "market-data-sidecar.storeContainer" -}}
{{- $v := .Values -}}
{{- $st := $v.store -}}
- name: {{ $st.name }}
  image: {{ printf "%s:%s" $st.image.repository ($st.image.tag | toString) | quote }}
  imagePullPolicy: {{ $st.image.pullPolicy }}
  {{- with $st.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $st.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: store
      containerPort: {{ $st.port | int }}
      protocol: TCP
  env:
    {{- include "market-data-sidecar.storeEnv" . | nindent 4 }}
    {{- range $name, $value := $st.env }}
    - name: {{ $name }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- with $st.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $st.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- range $kind := list "startup" "liveness" "readiness" }}
  {{- $mode := get $st.probes $kind }}
  {{- if eq $mode "sidecar" }}
  {{ $kind }}Probe:
    # The sidecar's endpoint, by number: a probe's named port must be one of
    # this container's own ports.
    httpGet:
      path: {{ ternary "/readyz" "/livez" (eq $kind "readiness") }}
      port: {{ $v.sidecar.port | int }}
    {{- toYaml (get $v.sidecar.probes $kind) | nindent 4 }}
  {{- else if eq $mode "custom" }}
  {{ $kind }}Probe:
    {{- toYaml (get $st (printf "%sProbe" $kind)) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $st.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $st.securityContext | nindent 4 }}
  {{- if or $v.dataVolume.enabled $st.tmpVolume $st.extraVolumeMounts }}
  volumeMounts:
    {{- if $v.dataVolume.enabled }}
    - name: {{ $v.dataVolume.name }}
      mountPath: {{ $v.dataVolume.storeMountPath }}
    {{- end }}
    {{- if $st.tmpVolume }}
    - name: store-tmp
      mountPath: /tmp
    {{- end }}
    {{- with $st.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}
