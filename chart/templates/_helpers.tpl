{{/*
Names, labels, images and the job config shared by every template.
Mount paths (/workspace, /output, /etc/llm-finetune) are part of the contract in
ARCHITECTURE.md; the Python side reads them from config.yaml's paths, never hard-codes them.
*/}}

{{/* Chart name (63 characters at most). */}}
{{- define "llm-finetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name prefix: release name + chart name (63 characters at most). */}}
{{- define "llm-finetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-finetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The job name (PyTorchJob or TrainJob): fullname, or fullname-runId. The Training Operator
names pods and services <job>-master-0 and <job>-worker-<i>: 52 characters keep those within
63 up to worker-999. JobSet names a TrainJob's pods <job>-<replicated job>-0-<i>-<5 random>
and rejects a JobSet whose longest pod name exceeds 63 (kubernetes-sigs/jobset v0.12.0
pkg/webhooks/jobset_webhook.go): 46 characters up to node-0-999. The fullname is truncated,
never the runId. What a runId may be (a DNS-1123 label, short enough to leave part of the
fullname) is checked in one place only: runId's pattern and maxLength in values.schema.json,
which Helm and the validator both apply.
*/}}
{{- define "llm-finetune.jobName" -}}
{{- $max := eq .Values.backend "trainjob" | ternary 46 52 }}
{{- $full := include "llm-finetune.fullname" . }}
{{- $id := toString .Values.runId }}
{{- $name := $full | trunc $max | trimSuffix "-" }}
{{- if $id }}
{{- $name = printf "%s-%s" ($full | trunc (max 0 (sub $max (add1 (len $id))) | int) | trimSuffix "-") $id }}
{{- end }}
{{- if not (regexMatch "^[a-z]" $name) }}
{{- fail (printf "job name %q must start with a letter (the Training Operator requires a DNS-1035 name); set fullnameOverride" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Labels of the job object (PyTorchJob or TrainJob): job.labels, and Kueue's queue label for job.queueName. */}}
{{- define "llm-finetune.jobLabels" -}}
{{- $labels := merge (dict) .Values.job.labels }}
{{- if .Values.job.queueName }}
{{- $_ := set $labels "kueue.x-k8s.io/queue-name" .Values.job.queueName }}
{{- end }}
{{- include "llm-finetune.componentLabels" (dict "root" . "component" "trainer" "extra" $labels) }}
{{- end }}

{{/* Name of a hook resource: fullname truncated so that "<name>-<suffix>" fits 63 characters. */}}
{{- define "llm-finetune.hookName" -}}
{{- $full := include "llm-finetune.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "llm-finetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-finetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-finetune.labels" -}}
helm.sh/chart: {{ include "llm-finetune.chart" . }}
{{ include "llm-finetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-finetune
{{- end }}

{{/* Labels of a component: (dict "root" $ "component" "trainer" "extra" <map or nil>). The chart's labels win. */}}
{{- define "llm-finetune.componentLabels" -}}
{{- $labels := merge (dict "app.kubernetes.io/component" .component) (include "llm-finetune.labels" .root | fromYaml) (.extra | default dict) }}
{{- toYaml $labels }}
{{- end }}

{{/* ServiceAccount of the job's pods; empty means the namespace default. */}}
{{- define "llm-finetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-finetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The claim: the workspace (shared mode) or the output (perPod + outputToClaim); empty when there is none. */}}
{{- define "llm-finetune.claimName" -}}
{{- if or (eq .Values.storage.mode "shared") .Values.storage.perPod.outputToClaim }}
{{- default (printf "%s-workspace" (include "llm-finetune.fullname" .)) .Values.storage.existingClaim }}
{{- end }}
{{- end }}

{{/* Image reference: (dict "image" .Values.images.<name> "root" $). digest > tag > appVersion; global.imageRegistry wins. */}}
{{- define "llm-finetune.image" -}}
{{- $registry := default .image.registry .root.Values.global.imageRegistry }}
{{- $ref := .image.repository }}
{{- if $registry }}
{{- $ref = printf "%s/%s" $registry $ref }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (toString (default .root.Chart.AppVersion .image.tag)) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of every pod (global + release), names or {name: ...}. */}}
{{- define "llm-finetune.imagePullSecrets" -}}
{{- $names := list }}
{{- range (concat .Values.global.imagePullSecrets .Values.imagePullSecrets) }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range ($names | uniq) }}
- name: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Where the claim is mounted: /workspace in shared mode (the claim is the workspace), /output
in perPod mode (each pod has its own /workspace). The pods, the run path, the helm-test pod
and NOTES.txt all mount or name the claim here.
*/}}
{{- define "llm-finetune.claimMountPath" -}}
{{- eq .Values.storage.mode "perPod" | ternary "/output" "/workspace" }}
{{- end }}

{{/* The run folder: on the claim, or on the pod's /workspace when perPod mode keeps no claim. */}}
{{- define "llm-finetune.runPath" -}}
{{- $root := "/workspace" }}
{{- if include "llm-finetune.claimName" . }}
{{- $root = include "llm-finetune.claimMountPath" . }}
{{- end }}
{{- printf "%s/runs/%s" $root (include "llm-finetune.jobName" .) }}
{{- end }}

{{/* config.yaml: the one contract both images read (llm_finetune.config.load_config). No secrets. */}}
{{- define "llm-finetune.config" -}}
{{- $paths := dict "workspace" "/workspace" "model" "/workspace/model" "dataset" "/workspace/dataset" "cache" "/workspace/cache" "run" (include "llm-finetune.runPath" .) }}
{{- $config := dict
  "apiVersion" "llm-finetune/v1"
  "run" (dict "name" (include "llm-finetune.jobName" .) "id" (toString .Values.runId))
  "paths" $paths
  "storage" (dict "mode" .Values.storage.mode)
  "model" .Values.model
  "dataset" .Values.dataset
  "data" .Values.data
  "training" .Values.training
  "output" .Values.output
  "download" .Values.download }}
{{- toYaml $config }}
{{- end }}

{{/* First 10 hex characters of the config's sha256: names the ConfigMap, annotates the pods. */}}
{{- define "llm-finetune.configChecksum" -}}
{{- include "llm-finetune.config" . | sha256sum | trunc 10 }}
{{- end }}

{{- define "llm-finetune.configMapName" -}}
{{- printf "%s-config-%s" (include "llm-finetune.jobName" .) (include "llm-finetune.configChecksum" .) }}
{{- end }}

{{/*
ServiceAccount, Role and RoleBinding of a hook's pod:
(dict "root" $ "name" <name> "labels" <labels YAML> "annotations" <hook annotations> "rules" <list of PolicyRule>).
The binding is weighted after the account and the role (hook weights order creation).
*/}}
{{- define "llm-finetune.hookRbac" -}}
{{- $meta := dict "name" .name "namespace" .root.Release.Namespace "labels" (fromYaml .labels) "annotations" .annotations }}
apiVersion: v1
kind: ServiceAccount
metadata:
  {{- toYaml $meta | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  {{- toYaml $meta | nindent 2 }}
rules: {{- if .rules }}{{ toYaml .rules | nindent 2 }}{{ else }} []{{ end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  {{- toYaml (merge (dict "annotations" (merge (dict "helm.sh/hook-weight" "-5") .annotations)) $meta) | nindent 2 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}
