{{/*
Helpers shared by every component. All names are namespaced `kefu.`; templates/<component>/ hold the objects.
*/}}

{{- define "kefu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-kefu, or the release name when it already contains the chart name. */}}
{{- define "kefu.fullname" -}}
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

{{- define "kefu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels. Args: dict root, component, [pool], [track]. */}}
{{- define "kefu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kefu.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .pool }}
kefu.io/pool: {{ . }}
{{- end }}
{{- with .track }}
track: {{ . }}
{{- end }}
{{- end -}}

{{/* Every label of an object. Same args as kefu.selectorLabels. */}}
{{- define "kefu.labels" -}}
helm.sh/chart: {{ include "kefu.chart" .root }}
{{ include "kefu.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kefu
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata: name, namespace, labels. Args: dict root, name, component, [pool], [track]. */}}
{{- define "kefu.metadata" -}}
name: {{ .name }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "kefu.labels" . | nindent 2 }}
{{- end -}}

{{- define "kefu.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kefu.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference. Args: dict root, base (images.<x>), override ({repository, tag}), [tag]. */}}
{{- define "kefu.image" -}}
{{- $repo := default .base.repository .override.repository -}}
{{- $tag := default (default .root.Chart.AppVersion .base.tag) (default .override.tag .tag) -}}
{{- printf "%s%s:%s" .root.Values.imageRegistry $repo $tag -}}
{{- end -}}

{{- define "kefu.workerName" -}}
{{- printf "%s-worker-%s" (include "kefu.fullname" .root) .pool | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kefu.gatewayName" -}}
{{- printf "%s-gateway" (include "kefu.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* KEFU_FAQ_URI: the Milvus subchart's Service, or the external URI. */}}
{{- define "kefu.faqUri" -}}
{{- if .Values.milvus.enabled -}}
{{- $name := "milvus" -}}
{{- if contains $name .Release.Name -}}
{{- printf "http://%s:19530" (.Release.Name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- printf "http://%s-%s:19530" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- else -}}
{{- required "faqStore.uri is required when milvus.enabled=false" .Values.faqStore.uri -}}
{{- end -}}
{{- end -}}

{{/* Container securityContext (every container, init containers too). */}}
{{- define "kefu.containerSecurityContext" -}}
{{- $c := .Values.containerSecurityContext -}}
allowPrivilegeEscalation: {{ $c.allowPrivilegeEscalation }}
readOnlyRootFilesystem: {{ $c.readOnlyRootFilesystem }}
runAsNonRoot: {{ $c.runAsNonRoot }}
runAsUser: {{ $c.runAsUser }}
runAsGroup: {{ $c.runAsGroup }}
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: {{ .Values.podSecurityContext.seccompProfileType }}
{{- end -}}

{{/* topologySpreadConstraints. Args: dict root, v (component values), selector (labels dict args). */}}
{{- define "kefu.topologySpread" -}}
{{- if .v.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .v.topologySpread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ .v.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "kefu.selectorLabels" .selector | nindent 8 }}
  - maxSkew: {{ .v.topologySpread.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "kefu.selectorLabels" .selector | nindent 8 }}
{{- end }}
{{- end -}}
