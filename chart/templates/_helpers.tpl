{{/*
Names, labels, images and the job config shared by every template.
Mount paths (/workspace, /output, /etc/llm-finetune) are part of the contract in
ARCHITECTURE.md; the Python side reads them from config.yaml's paths, never hard-codes them.
*/}}

{{/* Chart name (63 characters at most). */}}
{{- define "llm-finetune.name" -}}
{{- regexReplaceAll "-+$" (default .Chart.Name .Values.nameOverride | trunc 63) "" }}
{{- end }}

{{/* Release-scoped name prefix: release name + chart name (63 characters at most). */}}
{{- define "llm-finetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- regexReplaceAll "-+$" (.Values.fullnameOverride | trunc 63) "" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- regexReplaceAll "-+$" (.Release.Name | trunc 63) "" }}
{{- else }}
{{- regexReplaceAll "-+$" (printf "%s-%s" .Release.Name $name | trunc 63) "" }}
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
{{- $id := include "llm-finetune.runId" . }}
{{- $name := regexReplaceAll "-+$" ($full | trunc $max) "" }}
{{- if $id }}
{{- $name = printf "%s-%s" (regexReplaceAll "-+$" ($full | trunc (max 0 (sub $max (add1 (len $id))) | int)) "") $id }}
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
{{- printf "%s-%s" (regexReplaceAll "-+$" ($full | trunc (int (sub 62 (len .suffix)))) "") .suffix }}
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

{{/* runId as text: an integer without an exponent (Helm reads YAML numbers as floats; toString would give 1e+06). */}}
{{- define "llm-finetune.runId" -}}
{{- if or (kindIs "float64" .Values.runId) (kindIs "int64" .Values.runId) (kindIs "int" .Values.runId) }}
{{- int64 .Values.runId | toString }}
{{- else }}
{{- toString .Values.runId }}
{{- end }}
{{- end }}

{{/*
A map without its null leaves, as YAML. Helm 3 drops a user's null on a key whose chart default
is null, Helm 4 keeps it: without this the two would render different config.yaml files (and
ConfigMap names). training.args/lora keep theirs: there a null drops a default, in both Helms.
*/}}
{{- define "llm-finetune.withoutNulls" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- $_ := set $out $k (include "llm-finetune.withoutNulls" $v | fromYaml) }}
{{- else if not (kindIs "invalid" $v) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Whether the PyTorchJob has a Master replica: only where one pod must differ from the others —
perPod mode with the claim at /output on rank 0 alone (a ReadWriteOnce claim cannot attach to
several nodes) and more than one pod. Everywhere else every pod is an identical Worker and
worker-0 is rank 0: the Training Operator v1.9 injects its init-pytorch container (alpine:3.10
from Docker Hub, no securityContext: rejected under Pod Security "restricted") only into the
Workers of a job that has a Master
(kubeflow/training-operator@v1.9.0:pkg/controller.v1/pytorch/initcontainer.go:116-134).
*/}}
{{- define "llm-finetune.hasMaster" -}}
{{- if and (eq .Values.storage.mode "perPod") .Values.storage.perPod.outputToClaim (gt (int .Values.job.numWorkers) 1) }}true{{ end }}
{{- end }}

{{/* Name of the pod with rank 0 (logs, the output): <job>-master-0 or <job>-worker-0. */}}
{{- define "llm-finetune.rank0Pod" -}}
{{- printf "%s-%s-0" (include "llm-finetune.jobName" .) (ternary "master" "worker" (eq (include "llm-finetune.hasMaster" .) "true")) }}
{{- end }}

{{/* config.yaml: the one contract both images read (llm_finetune.config.load_config). No secrets. */}}
{{- define "llm-finetune.config" -}}
{{- $paths := dict "workspace" "/workspace" "model" "/workspace/model" "dataset" "/workspace/dataset" "cache" "/workspace/cache" "run" (include "llm-finetune.runPath" .) }}
{{- $config := dict
  "apiVersion" "llm-finetune/v1"
  "run" (include "llm-finetune.runSection" . | fromYaml)
  "paths" $paths
  "storage" (dict "mode" .Values.storage.mode)
  "model" (include "llm-finetune.withoutNulls" .Values.model | fromYaml)
  "dataset" (include "llm-finetune.withoutNulls" .Values.dataset | fromYaml)
  "data" (include "llm-finetune.withoutNulls" .Values.data | fromYaml)
  "training" .Values.training
  "output" (include "llm-finetune.withoutNulls" .Values.output | fromYaml)
  "download" (include "llm-finetune.withoutNulls" .Values.download | fromYaml) }}
{{- toYaml $config }}
{{- end }}

{{/* config.yaml's run: the job's name, runId and the retry budget (core/attempts.py). */}}
{{- define "llm-finetune.runSection" -}}
{{- $run := dict "name" (include "llm-finetune.jobName" .) "id" (include "llm-finetune.runId" .) }}
{{- if not (kindIs "invalid" .Values.job.runPolicy.backoffLimit) }}
{{- $_ := set $run "backoffLimit" (int64 .Values.job.runPolicy.backoffLimit) }}
{{- end }}
{{- toYaml $run }}
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

{{/*
Dotted paths of the values that look like a credential, one per line: (dict "v" <value> "path" <path>).
The expression is llm_finetune.validate.credentials.CREDENTIAL_RE (a test compares them).
*/}}
{{- define "llm-finetune.credentialPaths" -}}
{{- $re := "hf_[A-Za-z0-9]{30,}|(^|[^A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}([^A-Z0-9]|$)" }}
{{- if kindIs "map" .v }}
{{- range $k, $x := .v }}
{{- $p := ternary $k (printf "%s.%s" $.path $k) (eq $.path "") }}
{{- if regexMatch $re $k }}
{{ $.path | default "(values)" }} (one of its keys)
{{- end }}
{{- include "llm-finetune.credentialPaths" (dict "v" $x "path" $p) }}
{{- end }}
{{- else if kindIs "slice" .v }}
{{- range $i, $x := .v }}
{{- include "llm-finetune.credentialPaths" (dict "v" $x "path" (printf "%s[%d]" $.path $i)) }}
{{- end }}
{{- else if and (kindIs "string" .v) (regexMatch $re .v) }}
{{ .path }}
{{- end }}
{{- end }}

{{/*
Checks of the values no schema can express. configmap.yaml runs them, once per render: Helm renders
every template before it writes any (--show-only too), so its fail refuses the whole render.
*/}}
{{- define "llm-finetune.checks" -}}
{{- $found := include "llm-finetune.credentialPaths" (dict "v" .Values "path" "") | trim }}
{{- if $found }}
{{- fail (printf "%s: looks like a credential (a Hugging Face token or an AWS key id); values are rendered in clear text into the PyTorchJob and ConfigMaps. Put it in a Kubernetes Secret and reference that (secrets.hf / secrets.s3, or an env entry's valueFrom)" (splitList "\n" $found | join ", ")) }}
{{- end }}
{{- end }}
