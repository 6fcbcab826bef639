{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "ct-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-wide prefix of object names. Flux names the release after the HelmRelease
(e.g. fraud-detector-ct-serving); the component suffix must still fit in 63 characters.
*/}}
{{- define "ct-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else if contains (include "ct-serving.name" .) .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "ct-serving.name" .) | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "ct-serving.modelServer.fullname" -}}
{{- printf "%s-model-server" (include "ct-serving.fullname" .) }}
{{- end }}

{{- define "ct-serving.gateway.fullname" -}}
{{- printf "%s-gateway" (include "ct-serving.fullname" .) }}
{{- end }}

{{- define "ct-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object; model labels are sanitized into label values. */}}
{{- define "ct-serving.labels" -}}
helm.sh/chart: {{ include "ct-serving.chart" . }}
app.kubernetes.io/name: {{ include "ct-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ct-pipeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.model.name }}
ct-pipeline.io/model: {{ . | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
{{- end }}

{{- define "ct-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ct-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The model's lineage, as pod annotations (any characters allowed). */}}
{{- define "ct-serving.modelAnnotations" -}}
ct-pipeline.io/model: {{ .Values.model.name | quote }}
ct-pipeline.io/model-version: {{ .Values.model.version | quote }}
ct-pipeline.io/run-id: {{ .Values.model.runId | quote }}
ct-pipeline.io/bento-tag: {{ .Values.model.bentoTag | quote }}
ct-pipeline.io/data-hash: {{ .Values.model.dataHash | quote }}
{{- end }}

{{/* repository@digest when a digest is set (immutable), else repository:tag. */}}
{{- define "ct-serving.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* True ("true") when a model is deployed: a version and a pullable model server image. */}}
{{- define "ct-serving.deployed" -}}
{{- if and .Values.model.version .Values.image.repository (or .Values.image.digest .Values.image.tag) }}true{{- end }}
{{- end }}

{{- define "ct-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ct-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ct-serving.adminTokenSecret" -}}
{{- default (printf "%s-admin" (include "ct-serving.gateway.fullname" .)) .Values.gateway.adminTokenSecret }}
{{- end }}

{{/* Where the gateway writes its prediction log: predictionLog.uri, else the volume's mount path. */}}
{{- define "ct-serving.predictionLog.uri" -}}
{{- default .Values.predictionLog.mountPath .Values.predictionLog.uri }}
{{- end }}

{{/* The PVC the gateway mounts for its prediction log ("" when none: off, an object store, or no persistence). */}}
{{- define "ct-serving.predictionLog.claim" -}}
{{- if and (include "ct-serving.deployed" .) .Values.predictionLog.enabled (not .Values.predictionLog.uri) .Values.predictionLog.persistence.enabled }}
{{- default (printf "%s-predictions" (include "ct-serving.gateway.fullname" .)) .Values.predictionLog.persistence.existingClaim }}
{{- end }}
{{- end }}
