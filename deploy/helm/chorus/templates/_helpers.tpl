{{/* Resource names: the release name, then the part. */}}
{{- define "chorus.name" -}}
{{- printf "%s-%s" .root.Release.Name .part | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries. */}}
{{- define "chorus.labels" -}}
app.kubernetes.io/part-of: chorus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Redis URL the processes use. */}}
{{- define "chorus.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.bundled -}}
{{- printf "redis://%s:6379" (include "chorus.name" (dict "root" . "part" "redis")) -}}
{{- else -}}
{{- fail "set redis.url, or redis.bundled=true" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding CHORUS_API_KEYS. */}}
{{- define "chorus.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (include "chorus.name" (dict "root" . "part" "api-keys")) -}}
{{- end -}}

{{/* The Secret holding the Pusher app (CHORUS_PUSHER_APP_ID, _KEY, _SECRET); optional. */}}
{{- define "chorus.pusherSecret" -}}
{{- .Values.pusher.existingSecret | default (include "chorus.name" (dict "root" . "part" "pusher")) -}}
{{- end -}}

{{/* The hardened container security context every Chorus container uses. */}}
{{- define "chorus.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: ["ALL"]}
{{- end -}}
