{{/* Names and labels. */}}
{{- define "ragturbo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragturbo.fullname" -}}
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

{{- define "ragturbo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragturbo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ragturbo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ragturbo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ragturbo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragturbo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragturbo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the model comes from: "volume" (the models PVC) or "image" (the toy model in the image). */}}
{{- define "ragturbo.modelSource" -}}
{{- $s := default "volume" .Values.model.source -}}
{{- if not (has $s (list "volume" "image")) -}}
{{- fail (printf "model.source must be volume or image, got %q" $s) -}}
{{- end -}}
{{- if and (eq $s "image") .Values.jobs.trt.enabled -}}
{{- fail "jobs.trt.enabled needs model.source=volume: the plans are written to the models volume" -}}
{{- end -}}
{{- if and (eq $s "image") .Values.model.fetch.enabled -}}
{{- fail "model.fetch.enabled needs model.source=volume: it fills the models volume" -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{- define "ragturbo.modelDir" -}}
{{- printf "%s/%s" .Values.model.mountPath .Values.model.subPath -}}
{{- end -}}

{{- define "ragturbo.modelClaim" -}}
{{- default (printf "%s-models" (include "ragturbo.fullname" .)) .Values.model.persistence.existingClaim -}}
{{- end -}}

{{- define "ragturbo.dataClaim" -}}
{{- default (printf "%s-data" (include "ragturbo.fullname" .)) .Values.retrievalData.persistence.existingClaim -}}
{{- end -}}

{{/* The /data volume: the shared feature-store PVC, or a per-pod emptyDir. */}}
{{- define "ragturbo.dataVolume" -}}
- name: data
{{- if .Values.retrievalData.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "ragturbo.dataClaim" . }}
{{- else }}
  emptyDir:
    sizeLimit: 10Gi
{{- end }}
{{- end -}}

{{- define "ragturbo.secretName" -}}
{{- default (printf "%s-secrets" (include "ragturbo.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Qdrant URL: the dependency's service, else the external URL, else "" (embedded Edge). */}}
{{- define "ragturbo.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s-qdrant:6333" .Release.Name -}}
{{- else -}}
{{- .Values.externalQdrant.url -}}
{{- end -}}
{{- end -}}

{{- define "ragturbo.qdrantKeySet" -}}
{{- if or .Values.externalQdrant.existingSecret (and .Values.qdrant.enabled .Values.qdrant.apiKey) (and (not .Values.qdrant.enabled) .Values.externalQdrant.apiKey) -}}
true
{{- end -}}
{{- end -}}

{{/* The service refuses API keys shorter than 8 characters: fail at render time instead. */}}
{{- define "ragturbo.checkKeys" -}}
{{- range .Values.auth.apiKeys -}}
{{- if lt (len .) 8 -}}
{{- fail (printf "auth.apiKeys: every key needs >= 8 characters (one has %d)" (len .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Grace period: preStop sleep + drain + margin; refuse a smaller explicit value. The
service exits within drainTimeoutS + 1 s of SIGTERM (one shutdown deadline), so the
margin counts as at least 1 s. */}}
{{- define "ragturbo.gracePeriod" -}}
{{- $margin := max 1 (int .Values.lifecycle.shutdownMarginS) -}}
{{- $min := add .Values.lifecycle.preStopSleepS .Values.config.drainTimeoutS $margin -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $min -}}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $min) -}}
{{- fail (printf "terminationGracePeriodSeconds=%v is below preStopSleepS + drainTimeoutS + max(1, shutdownMarginS) = %v: pods would be killed mid-drain" .Values.terminationGracePeriodSeconds $min) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the service and the Jobs. */}}
{{- define "ragturbo.env" -}}
{{- if eq (include "ragturbo.modelSource" .) "volume" }}
- name: RAGTURBO_MODEL_DIR
  value: {{ include "ragturbo.modelDir" . | quote }}
- name: {{ .Values.model.engineDirEnv }}
  value: {{ printf "%s/%s" .Values.model.mountPath .Values.model.engineSubPath | quote }}
{{- end }}
- name: RAGTURBO_BACKEND
  value: {{ .Values.config.backend | quote }}
- name: RAGTURBO_DEVICE
  value: {{ .Values.config.device | quote }}
- name: RAGTURBO_DB_PATH
  value: /data
{{- with (include "ragturbo.qdrantUrl" .) }}
- name: RAGTURBO_QDRANT_URL
  value: {{ . | quote }}
{{- end }}
{{- if include "ragturbo.qdrantKeySet" . }}
- name: RAGTURBO_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-secrets" (include "ragturbo.fullname" .)) .Values.externalQdrant.existingSecret }}
      key: {{ .Values.externalQdrant.secretKey }}
{{- end }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: HF_HUB_OFFLINE
  value: "1"
{{- end -}}

{{/*
"true" when the pods use a GPU: gpu.enabled and a config.device other than cpu.
With device cpu the chart requests no GPU and drops tolerations for the GPU resource.
*/}}
{{- define "ragturbo.usesGpu" -}}
{{- if and .Values.gpu.enabled (not (hasPrefix "cpu" (toString .Values.config.device))) -}}true{{- end -}}
{{- end -}}

{{/*
The tolerations of the pods: .Values.tolerations, without the GPU resource's when no GPU is used.
*/}}
{{- define "ragturbo.tolerations" -}}
{{- $gpu := include "ragturbo.usesGpu" . -}}
{{- $out := list -}}
{{- range .Values.tolerations -}}
{{- if or $gpu (ne (toString .key) $.Values.gpu.resourceName) -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- with $out -}}
tolerations:
{{ toYaml . }}
{{- end -}}
{{- end -}}
