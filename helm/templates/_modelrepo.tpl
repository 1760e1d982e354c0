{{/*
The model repository of one pod, from a PVC or fetched from object storage, optionally pinned to one version.

Args (dict): root; model (repository model name); version (0 = the repository's version_policy); filters
(rclone --filter rules for the fetch, [] = everything of that model); pinImage (image with Python + PyYAML
that runs files/pin_version.py, i.e. the worker image); pinAnnotation (optional: the pod annotation whose value,
set by the canary rollout tool, overrides `version`).

Layout inside the pod:
  unpinned: the source (PVC or fetched emptyDir) at modelRepository.mountPath
  pinned:   the source at /models-src; an emptyDir view at mountPath whose <model>/config.yaml selects only
            `version` and whose <model>/<version> links into the source (files/pin_version.py)
*/}}

{{- define "kefu.repo.pinned" -}}
{{- if gt (int .version) 0 }}true{{ end -}}
{{- end -}}

{{- define "kefu.repo.srcPath" -}}
{{- if include "kefu.repo.pinned" . }}/models-src{{ else }}{{ .root.Values.modelRepository.mountPath }}{{ end -}}
{{- end -}}

{{- define "kefu.repo.volumes" -}}
{{- $r := .root.Values.modelRepository -}}
- name: model-repository-src
{{- if eq $r.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $r.pvc.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $r.objectStorage.sizeLimit }}
{{- end }}
{{- if include "kefu.repo.pinned" . }}
- name: model-repository
  emptyDir:
    sizeLimit: 16Mi
- name: pin-version
  configMap:
    name: {{ include "kefu.fullname" .root }}-pin-version
    defaultMode: 0444
{{- end }}
{{- end -}}

{{- define "kefu.repo.initContainers" -}}
{{- $root := .root -}}
{{- $r := $root.Values.modelRepository -}}
{{- $src := include "kefu.repo.srcPath" . -}}
{{- if eq $r.source "objectStorage" }}
- name: fetch-model
  image: "{{ $root.Values.imageRegistry }}{{ $r.objectStorage.image.repository }}:{{ $r.objectStorage.image.tag }}"
  imagePullPolicy: {{ $r.objectStorage.image.pullPolicy }}
  command: ["rclone"]
  args:
    - copy
    - {{ printf "%s/%s" (trimSuffix "/" $r.objectStorage.remote) .model | quote }}
    - {{ printf "%s/%s" $src .model | quote }}
    {{- range .filters }}
    - --filter
    - {{ . | quote }}
    {{- end }}
    {{- if include "kefu.repo.pinned" . }}
    - --filter
    - {{ printf "+ /%d/**" (int .version) | quote }}
    - --filter
    - "- /[0-9]*/**"
    {{- end }}
    {{- range $r.objectStorage.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: RCLONE_CONFIG
      value: /tmp/rclone.conf
    - name: XDG_CACHE_HOME
      value: /tmp/cache
  {{- with $r.objectStorage.envFromSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  resources:
    {{- toYaml $r.objectStorage.resources | nindent 4 }}
  securityContext:
    {{- include "kefu.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    - name: model-repository-src
      mountPath: {{ $src }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- if include "kefu.repo.pinned" . }}
- name: pin-version
  image: {{ .pinImage | quote }}
  imagePullPolicy: IfNotPresent
  command: ["python", "/etc/kefu/pin/pin_version.py", {{ $src | quote }}, {{ $r.mountPath | quote }}, {{ .model | quote }}, {{ int .version | quote }}]
  {{- with .pinAnnotation }}
  env:
    # the rollout tool's annotation on the pod template wins over the rendered version (files/pin_version.py)
    - name: KEFU_PIN_OVERRIDE
      valueFrom:
        fieldRef:
          fieldPath: {{ printf "metadata.annotations['%s']" . | quote }}
  {{- end }}
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 500m, memory: 256Mi}
  securityContext:
    {{- include "kefu.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    - name: model-repository-src
      mountPath: {{ $src }}
      readOnly: true
      {{- if and (eq $r.source "pvc") $r.pvc.subPath }}
      subPath: {{ $r.pvc.subPath }}
      {{- end }}
    - name: model-repository
      mountPath: {{ $r.mountPath }}
    - name: pin-version
      mountPath: /etc/kefu/pin
      readOnly: true
{{- end }}
{{- end -}}

{{- define "kefu.repo.mounts" -}}
{{- $r := .root.Values.modelRepository -}}
- name: model-repository-src
  mountPath: {{ include "kefu.repo.srcPath" . }}
  readOnly: true
  {{- if and (eq $r.source "pvc") $r.pvc.subPath }}
  subPath: {{ $r.pvc.subPath }}
  {{- end }}
{{- if include "kefu.repo.pinned" . }}
- name: model-repository
  mountPath: {{ $r.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
