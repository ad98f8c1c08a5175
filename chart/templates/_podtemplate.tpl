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
{{- $v := $root.Values }}
{{- $master := eq .role "Master" }}
{{- $perPod := eq $v.storage.mode "perPod" }}
{{- $readOnlyWorkspace := and (not $perPod) (not $master) }}
{{- $claim := include "llm-finetune.claimName" $root }}
{{- $outputClaim := and $perPod $master $claim }}
{{- $workspace := list (dict "name" "workspace" "mountPath" "/workspace" "readOnly" $readOnlyWorkspace) }}
{{- $trainerMounts := list (dict "name" "dshm" "mountPath" "/dev/shm") }}
{{- if $outputClaim }}
{{- $trainerMounts = prepend $trainerMounts (dict "name" "output" "mountPath" (include "llm-finetune.claimMountPath" $root)) }}
{{- end -}}
metadata:
  labels:
    {{- include "llm-finetune.componentLabels" (dict "root" $root "component" "trainer" "extra" $v.job.podLabels) | nindent 4 }}
  annotations:
    {{- include "llm-finetune.podAnnotations" (dict "extra" (merge (dict "checksum/config" (include "llm-finetune.configChecksum" $root)) $v.job.podAnnotations)) | nindent 4 }}
spec:
  {{- include "llm-finetune.podSpecCommon" (dict "root" $root "serviceAccountName" (include "llm-finetune.serviceAccountName" $root) "automountToken" $v.serviceAccount.automountServiceAccountToken) | nindent 2 }}
  terminationGracePeriodSeconds: {{ int64 $v.job.terminationGracePeriodSeconds }}
  {{- with $v.job.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.job.schedulerName }}
  schedulerName: {{ . }}
  {{- end }}
  {{- with $v.job.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.job.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.job.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  initContainers:
    {{- include "llm-finetune.container" (dict "root" $root "name" "storage-initializer" "image" $v.images.initializer
          "command" "initialize" "flags" ($readOnlyWorkspace | ternary (list "--wait") (list))
          "env" (include "llm-finetune.env" (dict "root" $root "extra" $v.initializer.env))
          "resources" $v.initializer.resources "mounts" $workspace) | nindent 4 }}
  containers:
    {{- include "llm-finetune.container" (dict "root" $root "name" "pytorch" "image" $v.images.trainer "command" "launch"
          "env" (include "llm-finetune.trainerEnv" $root) "resources" $v.job.resources
          "mounts" $workspace "mountsAfter" $trainerMounts) | nindent 4 }}
  volumes:
    - name: workspace
      {{- if $perPod }}
      ephemeral:
        volumeClaimTemplate:
          metadata:
            labels:
              {{- include "llm-finetune.selectorLabels" $root | nindent 14 }}
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
        claimName: {{ $claim }}
        {{- if $readOnlyWorkspace }}
        readOnly: true  {{- /* attached read-only: ReadWriteOnce + ReadOnlyMany claims work on many nodes */}}
        {{- end }}
      {{- end }}
    {{- if $outputClaim }}
    - name: output
      persistentVolumeClaim:
        claimName: {{ $claim }}
    {{- end }}
    {{- include "llm-finetune.podVolumes" (dict "configMap" (include "llm-finetune.configMapName" $root)) | nindent 4 }}
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
{{ include "llm-finetune.env" (dict "root" . "extra" .Values.job.env) }}
{{- end }}
