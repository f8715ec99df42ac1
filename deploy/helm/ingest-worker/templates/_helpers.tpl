{{/* Names and labels. */}}
{{- define "ingest-worker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ingest-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: api, worker or migrate. */}}
{{- define "ingest-worker.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ingest-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ingest-worker.secretName" -}}
{{- default (include "ingest-worker.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* The settings checked at render time: what the processes cannot start without. */}}
{{- define "ingest-worker.checks" -}}
{{- $_ := required "config.KAFKA_BOOTSTRAP_SERVERS is required" .Values.config.KAFKA_BOOTSTRAP_SERVERS -}}
{{- if not .Values.secret.existingSecret -}}
{{- $_ := required "secret.DATABASE_URL (or secret.existingSecret) is required" .Values.secret.DATABASE_URL -}}
{{- $_ := required "secret.INGEST_ADMIN_TOKEN (or secret.existingSecret) is required" .Values.secret.INGEST_ADMIN_TOKEN -}}
{{- end -}}
{{- if eq (toString .Values.config.INGEST_WORKER_HTTP_PORT) "0" -}}
{{- fail "config.INGEST_WORKER_HTTP_PORT must not be 0: the worker's probes use it" -}}
{{- end -}}
{{- $bound := include "ingest-worker.workerStopBoundS" . | float64 -}}
{{- if le (float64 .Values.worker.terminationGracePeriodSeconds) $bound -}}
{{- fail (printf "worker.terminationGracePeriodSeconds must exceed %v s with INGEST_KAFKA_TIMEOUT_S=%v (deploy/README.md, Stopping)" $bound .Values.config.INGEST_KAFKA_TIMEOUT_S) -}}
{{- end -}}
{{- end -}}

{{/* The worker's slowest clean stop, in seconds, from INGEST_KAFKA_TIMEOUT_S (t): two
commits at their bound of 3t + 5 (worker/loop.py), leaving the group (t), aborting and
flushing the producer (2t): 9t + 10. */}}
{{- define "ingest-worker.workerStopBoundS" -}}
{{- $t := float64 .Values.config.INGEST_KAFKA_TIMEOUT_S -}}
{{- addf (mulf 9 $t) 10 -}}
{{- end -}}

{{/* What every container of the chart shares: image, settings, security. */}}
{{- define "ingest-worker.container" -}}
image: {{ include "ingest-worker.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "ingest-worker.fullname" . }}
  - secretRef:
      name: {{ include "ingest-worker.secretName" . }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/* An HTTP probe on the named port. */}}
{{- define "ingest-worker.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- toYaml .timing | nindent 0 }}
{{- end -}}

{{/* The pod-level parts every workload shares. */}}
{{- define "ingest-worker.podSpec" -}}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir: {}
{{- end -}}

{{- define "ingest-worker.podAnnotations" -}}
checksum/config: {{ toJson .root.Values.config | sha256sum }}
checksum/secret: {{ toJson .root.Values.secret | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
