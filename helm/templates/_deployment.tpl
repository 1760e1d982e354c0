{{/*
The one Deployment shape every component uses (gateway, each worker pool, each canary pool).

Args (dict):
  root        the chart context ($)
  name        object name
  component   gateway | worker
  pool        worker pool (gateway role), or "" for the gateway
  track       stable | canary, or "" for the gateway
  v           the component's values (replicas, resources, nodeSelector, tolerations, affinity,
              topologySpread, podAnnotations, podLabels, extraEnv, probes, autoscaling)
  replicas    replica count, or "" when an HPA owns it
  image       image reference
  pullPolicy  image pull policy
  port        container port of the API (named http)
  internalPort  container port of /metrics (and the gateway's detailed health), named internal: only
              Prometheus reaches it (NetworkPolicy) and no public Service carries it
  probePort   http | internal: the port the probes use (kubelet probes are not subject to NetworkPolicy)
  livePath    liveness and startup probe path
  readyPath   readiness probe path
  env         rendered EnvVar list (YAML string)
  initContainers, volumes, mounts   rendered YAML lists (strings; may be empty)
  resources   container resources (dict)
  podAnnotations  extra pod annotations (dict), e.g. config checksums
*/}}
{{- define "kefu.deployment" -}}
{{- $root := .root -}}
{{- $sel := dict "root" $root "component" .component "pool" .pool "track" .track -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  {{- include "kefu.metadata" (merge (dict "name" .name) $sel) | nindent 2 }}
spec:
  {{- if ne (toString .replicas) "" }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "kefu.selectorLabels" $sel | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kefu.labels" $sel | nindent 8 }}
        {{- with .v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $ann := merge (dict) (.podAnnotations | default dict) (.v.podAnnotations | default dict) }}
      {{- with $ann }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "kefu.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: 30
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        runAsNonRoot: {{ $root.Values.podSecurityContext.runAsNonRoot }}
        runAsUser: {{ $root.Values.podSecurityContext.runAsUser }}
        runAsGroup: {{ $root.Values.podSecurityContext.runAsGroup }}
        fsGroup: {{ $root.Values.podSecurityContext.fsGroup }}
        seccompProfile:
          type: {{ $root.Values.podSecurityContext.seccompProfileType }}
      {{- with .v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- include "kefu.topologySpread" (dict "root" $root "v" .v "selector" $sel) | nindent 6 }}
      {{- with .initContainers }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ .image | quote }}
          imagePullPolicy: {{ .pullPolicy }}
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
            - name: internal
              containerPort: {{ .internalPort }}
              protocol: TCP
          env:
            {{- .env | nindent 12 }}
            {{- with .v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet: {path: {{ .livePath }}, port: {{ .probePort }}}
            periodSeconds: {{ .v.probes.periodSeconds }}
            timeoutSeconds: {{ .v.probes.timeoutSeconds }}
            failureThreshold: {{ .v.probes.startupFailureThreshold }}
          livenessProbe:
            httpGet: {path: {{ .livePath }}, port: {{ .probePort }}}
            periodSeconds: {{ .v.probes.periodSeconds }}
            timeoutSeconds: {{ .v.probes.timeoutSeconds }}
            failureThreshold: {{ .v.probes.failureThreshold }}
          readinessProbe:
            httpGet: {path: {{ .readyPath }}, port: {{ .probePort }}}
            periodSeconds: {{ .v.probes.periodSeconds }}
            timeoutSeconds: {{ .v.probes.timeoutSeconds }}
            failureThreshold: {{ .v.probes.failureThreshold }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- include "kefu.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}
