{{/*
Pod template of a PyTorchJob replica: (dict "root" $ "role" "Master"|"Worker").

* Master: storage-initializer fills /workspace, then the pytorch container trains.
* Worker, shared mode: the same claim mounted read-only; the initializer only waits
  (--wait) for the Master's completion manifests.
* Worker, perPod mode: its own ephemeral /workspace, filled by its own initializer.
* perPod + outputToClaim: the claim at /output, on the Master only (rank 0 writes outputs).
*/}}
{{- define "llm-finetune.podTemplate" -}}
{{- $root := .root }}
{{- $master := eq .role "Master" }}
{{- $perPod := eq $root.Values.storage.mode "perPod" }}
{{- $readOnlyWorkspace := and (not $perPod) (not $master) }}
{{- $outputClaim := and $perPod $master (include "llm-finetune.claimName" $root) -}}
metadata:
  {{- include "llm-finetune.jobPodMetadata" $root | nindent 2 }}
spec:
  {{- include "llm-finetune.jobPodSpec" $root | nindent 2 }}
  initContainers:
    {{- include "llm-finetune.initializerContainer" (dict "root" $root "name" "storage-initializer" "wait" $readOnlyWorkspace) | nindent 4 }}
  containers:
    {{- include "llm-finetune.trainerContainer" (dict "root" $root "name" "pytorch" "readOnlyWorkspace" $readOnlyWorkspace "outputClaim" $outputClaim) | nindent 4 }}
  volumes:
    {{- include "llm-finetune.jobVolumes" (dict "root" $root "readOnlyWorkspace" $readOnlyWorkspace "outputClaim" $outputClaim) | nindent 4 }}
{{- end }}

{{/*
The pieces of a job pod, shared by both backends: the PyTorchJob's replicas (above) and the
TrainingRuntime's replicated jobs (_trainjob.tpl).
*/}}

{{/* Labels and annotations of a job pod. */}}
{{- define "llm-finetune.jobPodMetadata" -}}
labels:
  {{- include "llm-finetune.componentLabels" (dict "root" . "component" "trainer" "extra" .Values.job.podLabels) | nindent 2 }}
annotations:
  {{- include "llm-finetune.podAnnotations" (dict "extra" (merge (dict "checksum/config" (include "llm-finetune.configChecksum" .)) .Values.job.podAnnotations)) | nindent 2 }}
{{- end }}

{{/* Pod spec fields of a job pod but containers and volumes. */}}
{{- define "llm-finetune.jobPodSpec" -}}
{{- $v := .Values }}
{{- include "llm-finetune.podSpecCommon" (dict "root" . "serviceAccountName" (include "llm-finetune.serviceAccountName" .) "automountToken" $v.serviceAccount.automountServiceAccountToken) }}
terminationGracePeriodSeconds: {{ int64 $v.job.terminationGracePeriodSeconds }}
{{- with $v.job.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.job.schedulerName }}
schedulerName: {{ . }}
{{- end }}
{{- with $v.job.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.job.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.job.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The storage initializer: (dict "root" $ "name" <container name> "wait" <bool: only wait for another pod's download>). */}}
{{- define "llm-finetune.initializerContainer" -}}
{{- $v := .root.Values }}
{{- include "llm-finetune.container" (dict "root" .root "name" .name "image" $v.images.initializer
      "command" "initialize" "flags" (.wait | ternary (list "--wait") (list))
      "env" (include "llm-finetune.env" (dict "root" .root "extra" $v.initializer.env "where" "initializer.env"))
      "resources" $v.initializer.resources "mounts" (include "llm-finetune.workspaceMounts" .wait | fromYamlArray)) }}
{{- end }}

{{/*
The trainer: (dict "root" $ "name" <container name> "readOnlyWorkspace" <bool> "outputClaim" <claim or "">
"spec" <false: no command, env and resources: a TrainJob's spec.trainer carries them>).
*/}}
{{- define "llm-finetune.trainerContainer" -}}
{{- $v := .root.Values }}
{{- $spec := ne (toString .spec) "false" }}
{{- $after := list (dict "name" "dshm" "mountPath" "/dev/shm") }}
{{- if .outputClaim }}
{{- $after = prepend $after (dict "name" "output" "mountPath" (include "llm-finetune.claimMountPath" .root)) }}
{{- end }}
{{- include "llm-finetune.container" (dict "root" .root "name" .name "image" $v.images.trainer "command" ($spec | ternary "launch" "")
      "env" ($spec | ternary (include "llm-finetune.trainerEnv" .root) "") "resources" $v.job.resources
      "mounts" (include "llm-finetune.workspaceMounts" .readOnlyWorkspace | fromYamlArray) "mountsAfter" $after) }}
{{- end }}

{{/* The /workspace mount; the argument: whether it is read-only. */}}
{{- define "llm-finetune.workspaceMounts" -}}
{{- toYaml (list (dict "name" "workspace" "mountPath" "/workspace" "readOnly" .)) }}
{{- end }}

{{/* Volumes of a job pod: (dict "root" $ "readOnlyWorkspace" <bool> "outputClaim" <claim or "">). */}}
{{- define "llm-finetune.jobVolumes" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- name: workspace
  {{- if eq $v.storage.mode "perPod" }}
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels:
          {{- include "llm-finetune.selectorLabels" $root | nindent 10 }}
      spec:
        accessModes:
          - ReadWriteOnce
        {{- with $v.storage.perPod.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $v.storage.perPod.size }}
  {{- else }}
  persistentVolumeClaim:
    claimName: {{ include "llm-finetune.claimName" $root }}
    {{- if .readOnlyWorkspace }}
    readOnly: true  {{- /* attached read-only: ReadWriteOnce + ReadOnlyMany claims work on many nodes */}}
    {{- end }}
  {{- end }}
{{- if .outputClaim }}
- name: output
  persistentVolumeClaim:
    claimName: {{ .outputClaim }}
{{- end }}
{{ include "llm-finetune.podVolumes" (dict "configMap" (include "llm-finetune.configMapName" $root)) }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.job.shmSizeLimit }}
{{- end }}


{{/* Env of the trainer container: the shutdown timeout, then the env of every job container. */}}
{{- define "llm-finetune.trainerEnv" -}}
{{- $grace := int .Values.job.terminationGracePeriodSeconds -}}
# Seconds torchrun gives the workers to checkpoint after SIGTERM (inside the pod's grace period).
- name: TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  value: {{ min $grace (max 5 (sub $grace 10)) | quote }}
{{ include "llm-finetune.env" (dict "root" . "extra" .Values.job.env "where" "job.env" "reserved" (list (dict "name" "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"))) }}
{{- end }}
