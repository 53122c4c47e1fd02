{{/* Names and labels. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
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

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{/* Labels without the component: the test resources add their own. */}}
{{- define "sluice.commonLabels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.commonLabels" . }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "sluice.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sluice.testImage" -}}
{{- if .Values.test.image.digest -}}
{{- printf "%s@%s" .Values.test.image.repository .Values.test.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.test.image.repository .Values.test.image.tag -}}
{{- end -}}
{{- end -}}

{{/* An explicit pullPolicy wins; otherwise a digest never changes (IfNotPresent) and a tag may
     (Always). Called with an image dict. */}}
{{- define "sluice.pullPolicy" -}}
{{- if .pullPolicy -}}{{ .pullPolicy }}
{{- else if .digest -}}IfNotPresent
{{- else -}}Always
{{- end -}}
{{- end -}}

{{- define "sluice.terminationGracePeriodSeconds" -}}
{{- $drain := int .Values.drainSeconds -}}
{{- $preStop := ternary (int .Values.ingest.preStopSeconds) 0 (eq .Values.mode "ingest") -}}
{{- $grace := .Values.terminationGracePeriodSeconds | default (add $drain 15 $preStop) | int -}}
{{- if le $grace $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than drainSeconds (%d): the drain would be killed" $grace $drain) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* "true" when the worker reads Kafka (config.kafka.enabled) instead of SQS. */}}
{{- define "sluice.kafka" -}}
{{- if and (eq .Values.mode "worker") (dig "kafka" "enabled" false .Values.config) -}}true{{- end -}}
{{- end -}}

{{/* "true" when ingest mode publishes to Kafka (config.producer.kafka_topic) instead of SQS. */}}
{{- define "sluice.kafkaIngest" -}}
{{- if and (eq .Values.mode "ingest") (dig "producer" "kafka_topic" "" .Values.config) -}}true{{- end -}}
{{- end -}}

{{/* Which autoscaler owns the replica count: keda, hpa or none. */}}
{{- define "sluice.scaler" -}}
{{- if and (eq .Values.mode "worker") .Values.keda.enabled -}}
keda
{{- else if .Values.autoscaling.enabled -}}
hpa
{{- else -}}
none
{{- end -}}
{{- end -}}

{{- define "sluice.maxReplicas" -}}
{{- $scaler := include "sluice.scaler" . -}}
{{- if eq $scaler "keda" -}}{{ include "sluice.cappedReplicas" (list . .Values.keda.maxReplicaCount) }}
{{- else if eq $scaler "hpa" -}}{{ include "sluice.cappedReplicas" (list . .Values.autoscaling.maxReplicas) }}
{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/*
A worker maximum capped by the table's budget (fleet.tableWcu × target_utilization) over the
per-pod floor (fleet.podFloorWcu): more pods would each get a sliver of the budget, cost more and
drain no faster. Ingest, or no fleet.tableWcu: the maximum as given. Called with (list $ max).
*/}}
{{- define "sluice.cappedReplicas" -}}
{{- $ := index . 0 -}}
{{- $max := index . 1 | int -}}
{{- $f := $.Values.fleet -}}
{{- if and (eq $.Values.mode "worker") (gt (int $f.tableWcu) 0) -}}
{{- $u := dig "rate" "target_utilization" 0.98 $.Values.config | float64 -}}
{{- $cap := max 1 (floor (divf (mulf (float64 $f.tableWcu) $u) (float64 $f.podFloorWcu)) | int) -}}
{{- min $max $cap -}}
{{- else -}}
{{- $max -}}
{{- end -}}
{{- end -}}

{{/*
Queued messages per replica that KEDA (and the backlog HPA) aims for: keda.queueLength, or (0)
one minute of work at the per-pod floor: fleet.podFloorWcu × 60 ÷ fleet.wcuPerMessage.
*/}}
{{- define "sluice.queueLength" -}}
{{- if gt (int .Values.keda.queueLength) 0 -}}
{{- .Values.keda.queueLength -}}
{{- else -}}
{{- max 1 (divf (mulf (float64 .Values.fleet.podFloorWcu) 60.0) (float64 .Values.fleet.wcuPerMessage) | floor | int) -}}
{{- end -}}
{{- end -}}

{{/* Container env shared by the init container and sluice itself. */}}
{{- define "sluice.env" -}}
- name: AWS_REGION
  value: {{ required "aws.region is required" .Values.aws.region | quote }}
{{- with .Values.aws.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: SLUICE__TELEMETRY__LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- if or .Values.serviceAccount.roleArn .Values.serviceAccount.podIdentity }}
# IRSA or Pod Identity gives the credentials: never the node's role through IMDS.
- name: AWS_EC2_METADATA_DISABLED
  value: "true"
{{- end }}
- name: SLUICE__TELEMETRY__LOG_FORMAT
  value: json
- name: SLUICE__WORKER__SHUTDOWN_GRACE
  value: {{ printf "%ds" (int .Values.drainSeconds) | quote }}
{{- if eq .Values.mode "ingest" }}
- name: SLUICE__PRODUCER__SPOOL_DIR
  value: /var/lib/sluice/spool
{{- if .Values.ingest.apiKeysSecret }}
- name: SLUICE__INGEST__API_KEYS_FILE
  value: /etc/sluice-keys/api_keys
{{- end }}
{{- if .Values.ingest.tlsSecret }}
- name: SLUICE__INGEST__TLS_CERT
  value: /etc/sluice-tls/tls.crt
- name: SLUICE__INGEST__TLS_KEY
  value: /etc/sluice-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.secrets.kafkaProperties }}
# Secret librdkafka properties (sasl.password, …), out of the ConfigMap.
- name: SLUICE__KAFKA__PROPERTIES_FILE
  value: /etc/sluice-kafka/properties
{{- end }}
{{- if .Values.secrets.redisUrl.name }}
# The Redis URL with its password, out of the ConfigMap (a file, not an environment variable).
- name: SLUICE__RATE__REDIS__URL_FILE
  value: /etc/sluice-redis/url
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts of the Secrets both containers read (the init container validates with them). */}}
{{- define "sluice.secretMounts" -}}
{{- if .Values.secrets.kafkaProperties }}
- name: kafka-properties
  mountPath: /etc/sluice-kafka
  readOnly: true
{{- end }}
{{- if .Values.secrets.redisUrl.name }}
- name: redis-url
  mountPath: /etc/sluice-redis
  readOnly: true
{{- end }}
{{- if eq .Values.mode "ingest" }}
{{- if .Values.ingest.apiKeysSecret }}
- name: api-keys
  mountPath: /etc/sluice-keys
  readOnly: true
{{- end }}
{{- if .Values.ingest.tlsSecret }}
- name: tls
  mountPath: /etc/sluice-tls
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Values arrive as float64 whatever their YAML spelling; turn whole numbers back into integers
     (in place) so sluice.toml reads `pollers = 8`, not `pollers = 8.0`. */}}
{{- define "sluice.intify" -}}
{{- $m := . -}}
{{- range $k, $v := $m -}}
{{- if kindIs "map" $v -}}
{{- include "sluice.intify" $v -}}
{{- else if and (kindIs "float64" $v) (eq (float64 (int64 $v)) $v) -}}
{{- $_ := set $m $k (int64 $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Non-empty when the chart makes rate.mode "membership": worker mode, more than one pod possible,
and config.rate sets no mode, share or expected_replicas.
*/}}
{{- define "sluice.membershipDefault" -}}
{{- $rate := .Values.config.rate | default dict -}}
{{- if and (eq .Values.mode "worker") (gt (include "sluice.maxReplicas" . | int) 1) (not $rate.mode) (not $rate.share) (not $rate.expected_replicas) -}}
true
{{- end -}}
{{- end -}}

{{/* The rate mode the pods run with (the chart's default included). */}}
{{- define "sluice.rateMode" -}}
{{- if include "sluice.membershipDefault" . -}}
membership
{{- else -}}
{{- dig "rate" "mode" "local" .Values.config -}}
{{- end -}}
{{- end -}}

{{/* The workload: ingest keeps a spool volume per pod (StatefulSet), the worker holds nothing. */}}
{{- define "sluice.workloadKind" -}}
{{- if eq .Values.mode "ingest" -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{/*
The spool volume's size: ingest.spoolStorage, or config.producer.spool_max_bytes (1 GiB by
default) plus a quarter for the segment being written and the filesystem, in Mi.
*/}}
{{- define "sluice.spoolStorage" -}}
{{- if .Values.ingest.spoolStorage -}}
{{- .Values.ingest.spoolStorage -}}
{{- else -}}
{{- $bytes := dig "producer" "spool_max_bytes" 1073741824 .Values.config | float64 -}}
{{- printf "%dMi" (divf (mulf $bytes 1.25) 1048576.0 | ceil | int) -}}
{{- end -}}
{{- end -}}
