{{/*
One worker Deployment (stable or canary track) of one pool. Args (dict): root, role (workers.<role>),
track (stable | canary), version (0 = the repository's version_policy), replicas ("" when an HPA owns it),
imageTag ("" = the pool's), name.
*/}}
{{- define "kefu.worker.deployment" -}}
{{- $root := .root -}}
{{- $w := index $root.Values.workers .role -}}
{{- $gpu := eq $w.device "gpu" -}}
{{- $base := ternary $root.Values.images.workerGpu $root.Values.images.workerCpu $gpu -}}
{{- $image := include "kefu.image" (dict "root" $root "base" $base "override" $w.image "tag" .imageTag) -}}
{{- $pinAnnotation := ternary "kefu.io/canary" (printf "kefu.io/stable-%s" $w.model) (eq .track "canary") -}}
{{- $repo := dict "root" $root "model" $w.model "version" .version "filters" (list) "pinImage" $image "pinAnnotation" $pinAnnotation -}}
{{- $env := list
  (dict "name" "KEFU_WORKER_HOST" "value" "0.0.0.0")
  (dict "name" "KEFU_WORKER_PORT" "value" "8001")
  (dict "name" "KEFU_WORKER_INTERNAL_PORT" "value" "9001")
  (dict "name" "KEFU_WORKER_DOCS_ENABLED" "value" (toString $w.docsEnabled))
  (dict "name" "KEFU_WORKER_REPOSITORY" "value" $root.Values.modelRepository.mountPath)
  (dict "name" "KEFU_WORKER_MODELS" "value" $w.model)
  (dict "name" "KEFU_WORKER_BACKEND" "value" "paddle")
  (dict "name" "KEFU_WORKER_PROCESSES" "value" (toString $w.processes))
  (dict "name" "KEFU_WORKER_MAX_BATCH_SIZE" "value" (toString $w.batching.maxBatchSize))
  (dict "name" "KEFU_WORKER_MAX_QUEUE_DELAY_MS" "value" (toString $w.batching.maxQueueDelayMs))
  (dict "name" "KEFU_WORKER_QUEUE_CAPACITY" "value" (toString $w.batching.queueCapacity))
  (dict "name" "KEFU_WORKER_REQUEST_TIMEOUT_MS" "value" (toString $w.batching.requestTimeoutMs))
  (dict "name" "KEFU_RUNNER_DEVICE" "value" $w.device)
  (dict "name" "KEFU_RUNNER_CPU_THREADS" "value" (toString $w.cpuThreads))
  (dict "name" "OMP_NUM_THREADS" "value" (toString $w.cpuThreads))
-}}
{{- $resources := deepCopy $w.resources -}}
{{- $v := deepCopy $w -}}
{{- if $gpu }}
{{- $env = concat $env (list
  (dict "name" "KEFU_RUNNER_GPU_MEMORY_POOL_MB" "value" (toString $w.gpu.memoryPoolMb))
  (dict "name" "KEFU_RUNNER_TENSORRT" "value" (ternary "1" "0" $w.gpu.tensorrt))
  (dict "name" "KEFU_RUNNER_TENSORRT_PRECISION" "value" $w.gpu.precision)
) -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits $w.gpu.resourceName (int $w.gpu.count) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- $requests := $resources.requests | default dict -}}
{{- $_ := set $requests $w.gpu.resourceName (int $w.gpu.count) -}}
{{- $_ := set $resources "requests" $requests -}}
{{- if not $w.tolerations }}
{{- $_ := set $v "tolerations" (list (dict "key" $w.gpu.resourceName "operator" "Exists" "effect" "NoSchedule")) -}}
{{- end }}
{{- end }}
{{- $ann := dict -}}
{{- if gt (int .version) 0 }}
{{- $_ := set $ann "kefu.io/model-version" (toString .version) -}}
{{- end }}
{{- include "kefu.deployment" (dict
  "root" $root "name" .name "component" "worker" "pool" .role "track" .track
  "v" $v
  "replicas" .replicas
  "image" $image
  "pullPolicy" $base.pullPolicy
  "port" 8001 "internalPort" 9001 "probePort" "http" "livePath" "/v2/health/live" "readyPath" "/v2/health/ready"
  "env" (toYaml $env)
  "initContainers" (trim (include "kefu.repo.initContainers" $repo))
  "volumes" (trim (include "kefu.repo.volumes" $repo))
  "mounts" (trim (include "kefu.repo.mounts" $repo))
  "resources" $resources
  "podAnnotations" $ann
) }}
{{- end -}}

{{/* The Service of one track of one pool: the API port for the gateway, the internal port (/metrics) for the
ServiceMonitor; the NetworkPolicy decides who reaches which. Args (dict): root, role, track, name. */}}
{{- define "kefu.worker.service" -}}
apiVersion: v1
kind: Service
metadata:
  {{- include "kefu.metadata" (dict "root" .root "name" .name "component" "worker" "pool" .role "track" .track) | nindent 2 }}
spec:
  type: ClusterIP
  selector:
    {{- include "kefu.selectorLabels" (dict "root" .root "component" "worker" "pool" .role "track" .track) | nindent 4 }}
  ports:
    - name: http
      port: 8001
      targetPort: http
      protocol: TCP
    - name: internal
      port: 9001
      targetPort: internal
      protocol: TCP
{{- end -}}
