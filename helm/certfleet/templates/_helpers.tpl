{{/*
Helpers shared by the certfleet templates.
*/}}

{{/* Chart name, overridable. */}}
{{- define "certfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains
the chart name. Truncated so that suffixes such as "-metrics" still fit the
63-character limit of Service names.
*/}}
{{- define "certfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "certfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "certfleet.labels" -}}
helm.sh/chart: {{ include "certfleet.chart" . }}
{{ include "certfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certfleet
{{- end }}

{{/* Selector labels of the worker pods (immutable in a Deployment: never change). */}}
{{- define "certfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels of the renewal CronJob's pods (not selected by the Services). */}}
{{- define "certfleet.cronjobLabels" -}}
helm.sh/chart: {{ include "certfleet.chart" . }}
app.kubernetes.io/name: {{ include "certfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: renew-scan
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certfleet
{{- end }}

{{- define "certfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "certfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference from an image block: repository[:tag][@digest]. Call with (dict "image" .Values.image "root" .) */}}
{{- define "certfleet.imageRef" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag | toString }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
A duration as certfleet reads it (30s, 5m, 1h30m, 250ms, 7d) in whole
seconds, rounded up. Used to derive terminationGracePeriodSeconds.
*/}}
{{- define "certfleet.durationSeconds" -}}
{{- $s := toString . }}
{{- if not (regexMatch "^([0-9]+(ms|s|m|h|d))+$" $s) }}
{{- fail (printf "%q is not a duration (expected e.g. 30s, 5m, 1h30m)" $s) }}
{{- end }}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h|d)" $s -1 }}
{{- $n := regexFind "^[0-9]+" $part | atoi }}
{{- $unit := regexReplaceAll "^[0-9]+" $part "" }}
{{- if eq $unit "ms" }}{{ $total = add $total (div (add $n 999) 1000) }}
{{- else if eq $unit "s" }}{{ $total = add $total $n }}
{{- else if eq $unit "m" }}{{ $total = add $total (mul $n 60) }}
{{- else if eq $unit "h" }}{{ $total = add $total (mul $n 3600) }}
{{- else if eq $unit "d" }}{{ $total = add $total (mul $n 86400) }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}

{{/* terminationGracePeriodSeconds: explicit value, else shutdownGrace + 15. */}}
{{- define "certfleet.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "certfleet.durationSeconds" .Values.config.shutdownGrace | atoi) 15 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* host:port for a listener; IPv6 hosts get brackets. Call with (list host port). */}}
{{- define "certfleet.listen" -}}
{{- $host := index . 0 | toString }}
{{- $port := index . 1 | int }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/* Whether a URL carries credentials (user or password before "@"). */}}
{{- define "certfleet.urlHasCredentials" -}}
{{- if regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*@" (toString .) }}true{{ end }}
{{- end }}

{{/* Name of the Secret the chart renders (createSecret: true). */}}
{{- define "certfleet.secretName" -}}
{{- include "certfleet.fullname" . }}
{{- end }}

{{/* Whether the chart renders its own Secret, i.e. createSecret and some plain secret value. */}}
{{- define "certfleet.renderSecret" -}}
{{- $v := .Values }}
{{- if and $v.createSecret (or (and $v.amqp.url (not $v.amqp.existingSecret)) (and $v.redis.url (not $v.redis.existingSecret)) (and $v.s3.credentials.accessKeyId (not $v.s3.credentials.existingSecret)) (and $v.encryption.key (not $v.encryption.existingSecret)) (and $v.acme.eab.hmacKey (not $v.acme.eab.existingSecret))) }}true{{ end }}
{{- end }}

{{/*
Checks that fail the install with a message instead of rendering pods that
would exit with code 64 (bad configuration). Included by the Deployment.
*/}}
{{- define "certfleet.validate" -}}
{{- $v := .Values }}
{{- range $what := list "amqp" "redis" }}
{{- $c := index $v $what }}
{{- if and (not $c.existingSecret) (not $c.url) }}
{{- fail (printf "%s: set %s.existingSecret (a Secret holding the URL under key %q) or %s.url" $what $what $c.existingSecretKey $what) }}
{{- end }}
{{- if and (not $c.existingSecret) $c.url (include "certfleet.urlHasCredentials" $c.url) (not $v.createSecret) }}
{{- fail (printf "%s.url contains credentials: put the URL in a Secret and set %s.existingSecret, or set createSecret: true (the password is then stored in the Helm release)" $what $what) }}
{{- end }}
{{- end }}
{{- if and (not $v.createSecret) (or $v.s3.credentials.accessKeyId $v.s3.credentials.secretAccessKey) }}
{{- fail "s3.credentials.accessKeyId/secretAccessKey are plain secrets: use s3.credentials.existingSecret, or set createSecret: true" }}
{{- end }}
{{- if and $v.createSecret (not $v.s3.credentials.existingSecret) (or $v.s3.credentials.accessKeyId $v.s3.credentials.secretAccessKey) (not (and $v.s3.credentials.accessKeyId $v.s3.credentials.secretAccessKey)) }}
{{- fail "s3.credentials: set both accessKeyId and secretAccessKey, or neither" }}
{{- end }}
{{- if and (not $v.createSecret) $v.encryption.key }}
{{- fail "encryption.key is a plain secret: use encryption.existingSecret, or set createSecret: true" }}
{{- end }}
{{- if and (not $v.createSecret) $v.acme.eab.hmacKey }}
{{- fail "acme.eab.hmacKey is a plain secret: use acme.eab.existingSecret, or set createSecret: true" }}
{{- end }}
{{- $eabKey := or $v.acme.eab.existingSecret (and $v.createSecret $v.acme.eab.hmacKey) }}
{{- if and $v.acme.eab.kid (not $eabKey) }}
{{- fail "acme.eab.kid is set but no HMAC key: set acme.eab.existingSecret (or hmacKey with createSecret: true)" }}
{{- end }}
{{- if and $eabKey (not $v.acme.eab.kid) }}
{{- fail "acme.eab: an HMAC key is set but acme.eab.kid is empty" }}
{{- end }}
{{- if and $v.acme.caCerts.configMap $v.acme.caCerts.secret }}
{{- fail "acme.caCerts: set configMap or secret, not both" }}
{{- end }}
{{- if not (has $v.schedule.mode (list "worker" "cronjob" "none")) }}
{{- fail (printf "schedule.mode %q: expected worker, cronjob or none" $v.schedule.mode) }}
{{- end }}
{{- if and (not $v.encryption.insecurePlaintextKeys) (not (include "certfleet.encryptionSecret" .)) }}
{{- fail "encryption: set encryption.existingSecret (a Secret holding the workers' key), or encryption.key with createSecret: true; a worker refuses to start without it (insecurePlaintextKeys: true stores keys unencrypted, for tests)" }}
{{- end }}
{{- $dnsOnly := true }}
{{- range $v.config.workerBindings }}
{{- if not (hasSuffix ".dns-01" .) }}{{ $dnsOnly = false }}{{ end }}
{{- end }}
{{- if and (not $v.http01.enabled) (not $dnsOnly) }}
{{- fail (printf "http01.enabled is false, but config.workerBindings %v also bind http-01 jobs: bind only dns-01 jobs (job.*.dns-01)" $v.config.workerBindings) }}
{{- end }}
{{- if and $dnsOnly (not $v.dns01.provider) (not $v.dns01.zones) }}
{{- fail "config.workerBindings bind only dns-01 jobs, but no dns01.provider (or dns01.zones) is set" }}
{{- end }}
{{- $_ := include "certfleet.durationSeconds" $v.config.shutdownGrace }}
{{- end }}

{{/* The encryption key Secret (name), if any. */}}
{{- define "certfleet.encryptionSecret" -}}
{{- if .Values.encryption.existingSecret }}
{{- .Values.encryption.existingSecret }}
{{- else if and .Values.createSecret .Values.encryption.key }}
{{- include "certfleet.secretName" . }}
{{- end }}
{{- end }}

{{/*
Environment shared by the worker and the renewal CronJob: the broker and
Redis URLs and the S3 credentials, each from a Secret (or, for URLs without
credentials, from the ConfigMap through envFrom). Call with the root context.
*/}}
{{- define "certfleet.connectionEnv" -}}
{{- $v := .Values }}
{{- $secret := include "certfleet.secretName" . }}
{{- if $v.amqp.existingSecret }}
- name: CERTFLEET_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.amqp.existingSecret }}
      key: {{ $v.amqp.existingSecretKey }}
{{- else if and $v.createSecret $v.amqp.url }}
- name: CERTFLEET_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: amqp-url
{{- end }}
{{- if $v.redis.existingSecret }}
- name: CERTFLEET_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.existingSecretKey }}
{{- else if and $v.createSecret $v.redis.url }}
- name: CERTFLEET_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: redis-url
{{- end }}
{{- if $v.s3.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.credentials.existingSecret }}
      key: {{ $v.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.credentials.existingSecret }}
      key: {{ $v.s3.credentials.secretAccessKeyKey }}
{{- else if and $v.createSecret $v.s3.credentials.accessKeyId }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
