{{/*
Names, labels and the per-service pieces the templates share. Helpers taking
a service take a dict: root (the top-level context) and name (the service).
*/}}

{{- define "alert-history.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alert-history.fullname" -}}
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

{{/* Leaves room for the longest suffix, "-recommender", within 63 characters. */}}
{{- define "alert-history.componentName" -}}
{{- $base := include "alert-history.fullname" .root | trunc 51 | trimSuffix "-" }}
{{- printf "%s-%s" $base .name }}
{{- end }}

{{- define "alert-history.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alert-history.labels" -}}
helm.sh/chart: {{ include "alert-history.chart" . }}
app.kubernetes.io/name: {{ include "alert-history.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: alert-history
{{- end }}

{{- define "alert-history.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alert-history.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "alert-history.componentLabels" -}}
{{ include "alert-history.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Every service in start order; the gateway is the HTTP one. */}}
{{- define "alert-history.serviceNames" -}}
gateway history classifier publisher recommender
{{- end }}

{{/* Services that keep a database: SQLite files or PostgreSQL. */}}
{{- define "alert-history.statefulNames" -}}
history publisher recommender
{{- end }}

{{- define "alert-history.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "alert-history.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "alert-history.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the credentials, created by the chart or existing. */}}
{{- define "alert-history.secretName" -}}
{{- default (include "alert-history.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* "true" when no external database is configured, so SQLite is in use. */}}
{{- define "alert-history.usesSqlite" -}}
{{- if not (or .Values.database.external .Values.secrets.DATABASE_URL) }}true{{ end }}
{{- end }}

{{/* "true" when the services should skip migrations because the hook Job runs them. */}}
{{- define "alert-history.migrationJob" -}}
{{- if and .Values.migrations.enabled (not (include "alert-history.usesSqlite" .)) }}true{{ end }}
{{- end }}

{{- define "alert-history.targetsConfigured" -}}
{{- if or .Values.targets.existingSecret .Values.targets.list }}true{{ end }}
{{- end }}

{{- define "alert-history.targetsSecretName" -}}
{{- default (printf "%s-targets" (include "alert-history.fullname" .)) .Values.targets.existingSecret }}
{{- end }}

{{/* host:port a service dials to reach another service. */}}
{{- define "alert-history.address" -}}
{{- $service := index .root.Values .name }}
{{- printf "%s.%s.svc:%v" (include "alert-history.componentName" .) .root.Release.Namespace $service.grpcPort }}
{{- end }}

{{/* Secret keys each service reads, by service. */}}
{{- define "alert-history.secretKeys" -}}
{{- $keys := dict
  "gateway" (list "REDIS_URL" "WEBHOOK_BEARER_TOKEN" "WEBHOOK_BASIC_AUTH_USERNAME" "WEBHOOK_BASIC_AUTH_PASSWORD" "API_TOKENS")
  "history" (list "REDIS_URL")
  "classifier" (list "REDIS_URL" "LLM_API_KEY")
  "publisher" (list "REDIS_URL")
  "recommender" (list "REDIS_URL" "LLM_API_KEY")
}}
{{- index $keys .name | join " " }}
{{- end }}

{{/* Plain environment variables of one service, as a YAML mapping. */}}
{{- define "alert-history.plainEnv" -}}
{{- $root := .root }}
{{- $service := index $root.Values .name }}
{{- $env := dict
  "LOG_LEVEL" $root.Values.logLevel
  "LISTEN_HOST" "0.0.0.0"
  "SHUTDOWN_DELAY_SECONDS" (toString $root.Values.shutdown.delaySeconds)
  "SHUTDOWN_GRACE_SECONDS" (toString $root.Values.shutdown.graceSeconds)
  "HISTORY_ADDR" (include "alert-history.address" (dict "root" $root "name" "history"))
  "CLASSIFIER_ADDR" (include "alert-history.address" (dict "root" $root "name" "classifier"))
  "PUBLISHER_ADDR" (include "alert-history.address" (dict "root" $root "name" "publisher"))
  "RECOMMENDER_ADDR" (include "alert-history.address" (dict "root" $root "name" "recommender"))
  "OTEL_SERVICE_NAME" (printf "alert-history-%s" .name)
  "OTEL_TRACES_SAMPLER" $root.Values.otel.sampler
  "OTEL_TRACES_SAMPLER_ARG" (toString $root.Values.otel.samplerArg)
}}
{{- if $root.Values.otel.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $root.Values.otel.endpoint }}
{{- else }}
{{- $_ := set $env "OTEL_SDK_DISABLED" "true" }}
{{- end }}
{{- if eq .name "gateway" }}
{{- $_ := set $env "HTTP_PORT" (toString $service.port) }}
{{- else }}
{{- $_ := set $env "GRPC_PORT" (toString $service.grpcPort) }}
{{- $_ := set $env "METRICS_PORT" (toString $service.metricsPort) }}
{{- end }}
{{- if has .name (splitList " " (include "alert-history.statefulNames" .)) }}
{{- if include "alert-history.usesSqlite" $root }}
{{- $_ := set $env "DATA_DIR" $root.Values.database.sqlite.dataDir }}
{{- else }}
{{- $_ := set $env "DATABASE_POOL_SIZE" (toString $root.Values.database.poolSize) }}
{{- end }}
{{- $_ := set $env "MIGRATE_ON_START" (ternary "false" "true" (eq (include "alert-history.migrationJob" $root) "true")) }}
{{- end }}
{{- if and (eq .name "publisher") (include "alert-history.targetsConfigured" $root) }}
{{- $_ := set $env "PUBLISHING_TARGETS_FILE" (printf "/etc/alert-history/targets/%s" $root.Values.targets.key) }}
{{- end }}
{{- if $root.Values.tls.grpc.enabled }}
{{- $_ := set $env "GRPC_TLS_CA_FILE" "/etc/alert-history/tls/grpc/ca.crt" }}
{{- if ne .name "gateway" }}
{{- $_ := set $env "GRPC_TLS_CERT_FILE" "/etc/alert-history/tls/grpc/tls.crt" }}
{{- $_ := set $env "GRPC_TLS_KEY_FILE" "/etc/alert-history/tls/grpc/tls.key" }}
{{- end }}
{{- end }}
{{- if and (eq .name "gateway") $root.Values.tls.http.enabled }}
{{- $_ := set $env "HTTP_TLS_CERT_FILE" "/etc/alert-history/tls/http/tls.crt" }}
{{- $_ := set $env "HTTP_TLS_KEY_FILE" "/etc/alert-history/tls/http/tls.key" }}
{{- end }}
{{- range $key, $value := $root.Values.env }}
{{- $_ := set $env $key (toString $value) }}
{{- end }}
{{- range $key, $value := $service.env }}
{{- $_ := set $env $key (toString $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The container's env list: plain values, then credentials from the Secret. */}}
{{- define "alert-history.env" -}}
{{- $root := .root }}
{{- range $key, $value := include "alert-history.plainEnv" . | fromYaml }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- if and (has .name (splitList " " (include "alert-history.statefulNames" .))) (not (include "alert-history.usesSqlite" $root)) }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "alert-history.secretName" $root }}
      key: DATABASE_URL
{{- end }}
{{- range $key := splitList " " (include "alert-history.secretKeys" .) }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "alert-history.secretName" $root }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}

{{/* Probes: HTTP for the gateway, native gRPC for the others. The kubelet's
gRPC probe speaks plaintext only, so with gRPC TLS on an exec probe runs a
health check over TLS instead. */}}
{{- define "alert-history.probeAction" -}}
{{- $root := .root }}
{{- $service := index $root.Values .name }}
{{- if eq .name "gateway" }}
httpGet:
  path: {{ .path }}
  port: http
  scheme: {{ ternary "HTTPS" "HTTP" $root.Values.tls.http.enabled }}
{{- else if $root.Values.tls.grpc.enabled }}
exec:
  command:
    - python
    - /etc/alert-history/probe/grpc_health_check.py
    - --port={{ $service.grpcPort }}
    - --server-name={{ include "alert-history.componentName" . }}.{{ $root.Release.Namespace }}.svc
    - --ca-file=/etc/alert-history/tls/grpc/ca.crt
{{- else }}
grpc:
  port: {{ $service.grpcPort }}
{{- end }}
{{- end }}

{{- define "alert-history.probes" -}}
startupProbe:
  {{- include "alert-history.probeAction" (merge (dict "path" "/healthz") .) | trim | nindent 2 }}
  periodSeconds: 2
  timeoutSeconds: 3
  failureThreshold: 60
livenessProbe:
  {{- include "alert-history.probeAction" (merge (dict "path" "/healthz") .) | trim | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  {{- include "alert-history.probeAction" (merge (dict "path" "/readyz") .) | trim | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* Rendering fails on settings that cannot work together. */}}
{{- define "alert-history.validate" -}}
{{- $root := . }}
{{- if include "alert-history.usesSqlite" . }}
{{- range $name := splitList " " (include "alert-history.statefulNames" .) }}
{{- $service := index $root.Values $name }}
{{- if and $service.enabled (or (gt (int $service.replicas) 1) $service.autoscaling.enabled) }}
{{- fail (printf "%s: the embedded SQLite database (no DATABASE_URL) works on one machine only, so it needs %s.replicas=1 and %s.autoscaling.enabled=false; for more replicas use PostgreSQL: set database.external=true and DATABASE_URL in secrets or existingSecret" $name $name $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.database.external (not .Values.existingSecret) (not .Values.secrets.DATABASE_URL) }}
{{- fail "database.external=true needs secrets.DATABASE_URL or an existingSecret holding DATABASE_URL" }}
{{- end }}
{{- if and .Values.tls.grpc.enabled (not .Values.tls.grpc.secretName) }}
{{- fail "tls.grpc.enabled=true needs tls.grpc.secretName, a Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and .Values.tls.http.enabled (not .Values.tls.http.secretName) }}
{{- fail "tls.http.enabled=true needs tls.http.secretName, a Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.targetDiscovery.namespaces (not .Values.publisher.enabled) }}
{{- fail "targetDiscovery.namespaces needs publisher.enabled=true" }}
{{- end }}
{{- if and .Values.targetDiscovery.namespaces (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "targetDiscovery.namespaces needs serviceAccount.create=true or a serviceAccount.name, so that the namespace's default ServiceAccount gets no access to Secrets" }}
{{- end }}
{{- end }}
