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
{{- $config := list "--config" "/etc/llm-finetune/config.yaml" }}
{{- $initCommand := concat (list "llm-finetune" "initialize") $config }}
{{- if $readOnlyWorkspace }}
{{- $initCommand = append $initCommand "--wait" }}
{{- end }}
{{- $mounts := include "llm-finetune.commonMounts" $readOnlyWorkspace -}}
metadata:
  labels:
    {{- include "llm-finetune.componentLabels" (dict "root" $root "component" "trainer" "extra" $v.job.podLabels) | nindent 4 }}
  annotations:
    {{- toYaml (merge (dict "checksum/config" (include "llm-finetune.configChecksum" $root)) $v.job.podAnnotations (dict "sidecar.istio.io/inject" "false")) | nindent 4 }}
spec:
  {{- with (include "llm-finetune.imagePullSecrets" $root) }}
  imagePullSecrets:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with (include "llm-finetune.serviceAccountName" $root) }}
  serviceAccountName: {{ . }}
  {{- end }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
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
    - name: storage-initializer
      image: {{ include "llm-finetune.image" (dict "image" $v.images.initializer "root" $root) }}
      imagePullPolicy: {{ $v.images.initializer.pullPolicy }}
      command:
        {{- toYaml $initCommand | nindent 8 }}
      env:
        {{- include "llm-finetune.env" (dict "root" $root "extra" $v.initializer.env) | nindent 8 }}
      resources:
        {{- include "llm-finetune.resources" $v.initializer.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      terminationMessagePolicy: FallbackToLogsOnError
      volumeMounts:
        {{- $mounts | nindent 8 }}
  containers:
    - name: pytorch
      image: {{ include "llm-finetune.image" (dict "image" $v.images.trainer "root" $root) }}
      imagePullPolicy: {{ $v.images.trainer.pullPolicy }}
      command:
        {{- toYaml (concat (list "llm-finetune" "launch") $config) | nindent 8 }}
      env:
        # Seconds torchrun gives the workers to checkpoint after SIGTERM (inside the pod's grace period).
        - name: TORCH_ELASTIC_SHUTDOWN_TIMEOUT
          value: {{ $grace := int $v.job.terminationGracePeriodSeconds }}{{ min $grace (max 5 (sub $grace 10)) | quote }}
        {{- include "llm-finetune.env" (dict "root" $root "extra" $v.job.env) | nindent 8 }}
      resources:
        {{- include "llm-finetune.resources" $v.job.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      terminationMessagePolicy: FallbackToLogsOnError
      volumeMounts:
        {{- $mounts | nindent 8 }}
        {{- if $outputClaim }}
        - name: output
          mountPath: /output
        {{- end }}
        - name: dshm
          mountPath: /dev/shm
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
    - name: config
      configMap:
        name: {{ include "llm-finetune.configMapName" $root }}
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.job.shmSizeLimit }}
{{- end }}
