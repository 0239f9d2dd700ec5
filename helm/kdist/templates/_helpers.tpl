{{/*
Name of the RayJob and of every object of the release. KubeRay refuses RayJob names longer
than 47 characters (it derives cluster and service names from them).
*/}}
{{- define "kdist.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- end -}}

{{- define "kdist.stage" -}}
{{- .Values.stage | default (ternary "run" "demo" (not (empty .Values.config))) -}}
{{- end -}}

{{- define "kdist.selectorLabels" -}}
app.kubernetes.io/name: kdist
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kdist.labels" -}}
{{ include "kdist.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kdist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kdist.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kdist.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kdist.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-api-keys" (include "kdist.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "kdist.claimName" -}}
{{- $root := index . 0 -}}{{- $which := index . 1 -}}
{{- $pvc := index $root.Values.persistence $which -}}
{{- default (printf "%s-%s" (include "kdist.fullname" $root) $which) $pvc.existingClaim -}}
{{- end -}}

{{/* The "restricted" Pod Security Standard. */}}
{{- define "kdist.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kdist.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
runAsNonRoot: true
{{- end -}}

{{/* Requests equal limits; GPUs as nvidia.com/gpu. Argument: a resources value. */}}
{{- define "kdist.resources" -}}
{{- $amounts := dict "cpu" (toString .cpu) "memory" (toString .memory) -}}
{{- if gt (int .gpu) 0 -}}{{- $_ := set $amounts "nvidia.com/gpu" (int .gpu) -}}{{- end -}}
requests:
  {{- toYaml $amounts | nindent 2 }}
limits:
  {{- toYaml $amounts | nindent 2 }}
{{- end -}}

{{/* Scheduling of one pod group. Argument: head, worker or llmServer values. */}}
{{- define "kdist.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Env vars of the Ray pods: HF_HOME on the cache, API keys from Secrets. */}}
{{- define "kdist.env" -}}
{{- $env := list -}}
{{- if .Values.persistence.cache.enabled -}}
{{- $env = append $env (dict "name" "HF_HOME" "value" "/cache/huggingface") -}}
{{- end -}}
{{- range .Values.secrets.env -}}
{{- $ref := dict "name" (default (include "kdist.secretName" $) .secretName) "key" .key -}}
{{- $env = append $env (dict "name" .name "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
Pod template of a Ray group. Argument: dict with root (the chart context), group (head or
worker values) and component (ray-head or ray-worker).
*/}}
{{- define "kdist.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "kdist.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  serviceAccountName: {{ include "kdist.serviceAccountName" $root }}
  {{- /* Only the autoscaler (a sidecar of the head) calls the Kubernetes API. */}}
  automountServiceAccountToken: {{ and $v.autoscaling.enabled (eq .component "ray-head") }}
  securityContext:
    {{- include "kdist.podSecurityContext" $root | nindent 4 }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (include "kdist.scheduling" .group) }}{{ . | trim | nindent 2 }}{{ end }}
  containers:
    - name: {{ .component }}
      image: {{ include "kdist.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      resources:
        {{- include "kdist.resources" .group.resources | nindent 8 }}
      env:
        {{- include "kdist.env" $root | nindent 8 }}
      securityContext:
        {{- include "kdist.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/kdist
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
        {{- if $v.persistence.cache.enabled }}
        - name: cache
          mountPath: /cache
        {{- end }}
        {{- if $v.persistence.outputs.enabled }}
        - name: outputs
          mountPath: /outputs
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "kdist.fullname" $root }}-config
    - name: dshm
      emptyDir:
        medium: Memory
    {{- if $v.persistence.cache.enabled }}
    - name: cache
      persistentVolumeClaim:
        claimName: {{ include "kdist.claimName" (list $root "cache") }}
    {{- end }}
    {{- if $v.persistence.outputs.enabled }}
    - name: outputs
      persistentVolumeClaim:
        claimName: {{ include "kdist.claimName" (list $root "outputs") }}
    {{- end }}
{{- end -}}

{{/*
Pod template of KubeRay's submitter (a Job named after the RayJob): restricted like the Ray
pods, the image and its pull secrets, no API token. No command: KubeRay fills in `ray job
submit` and `ray job logs --follow` (what `kdist logs` reads).
*/}}
{{- define "kdist.submitterPodTemplate" -}}
metadata:
  labels:
    {{- include "kdist.labels" . | nindent 4 }}
    app.kubernetes.io/component: ray-submitter
spec:
  serviceAccountName: {{ include "kdist.serviceAccountName" . }}
  automountServiceAccountToken: false
  restartPolicy: Never
  securityContext:
    {{- include "kdist.podSecurityContext" . | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-job-submitter
      image: {{ include "kdist.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      resources:
        {{- toYaml .Values.submitter.resources | nindent 8 }}
      securityContext:
        {{- include "kdist.containerSecurityContext" . | nindent 8 }}
{{- end -}}

{{/* Checks that values.schema.json cannot express. */}}
{{- define "kdist.checks" -}}
{{- $w := .Values.worker -}}
{{- if or (gt (int $w.minReplicas) (int $w.replicas)) (gt (int $w.replicas) (int $w.maxReplicas)) -}}
{{- fail "worker: need minReplicas <= replicas <= maxReplicas" -}}
{{- end -}}
{{- if and .Values.secrets.create .Values.secrets.existingSecret -}}
{{- fail "secrets: set either existingSecret or create, not both" -}}
{{- end -}}
{{- if and .Values.llmServer.enabled (not .Values.llmServer.model) -}}
{{- fail "llmServer.model is required when llmServer.enabled is true" -}}
{{- end -}}
{{- end -}}
