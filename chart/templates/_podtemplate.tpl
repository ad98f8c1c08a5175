{{/* The PyTorchJob spec: runPolicy (null values left out) and the replicas of the topology (llm-finetune.hasMaster). */}}
{{- define "llm-finetune.pytorchJobSpec" -}}
{{- $runPolicy := dict }}
{{- range $key, $value := .Values.job.runPolicy }}
{{- if not (kindIs "invalid" $value) }}
{{- $_ := set $runPolicy $key $value }}
{{- end }}
{{- end -}}
nprocPerNode: {{ toString .Values.job.nprocPerNode | quote }}
runPolicy:
  {{- toYaml $runPolicy | nindent 2 }}
pytorchReplicaSpecs:
  {{- if include "llm-finetune.hasMaster" . }}
  Master:
    replicas: 1
    restartPolicy: {{ .Values.job.restartPolicy }}
    template:
      {{- include "llm-finetune.podTemplate" (dict "root" . "role" "Master") | nindent 6 }}
  Worker:
    replicas: {{ sub (int .Values.job.numWorkers) 1 }}
    restartPolicy: {{ .Values.job.restartPolicy }}
    template:
      {{- include "llm-finetune.podTemplate" (dict "root" . "role" "Worker") | nindent 6 }}
  {{- else }}
  Worker:
    replicas: {{ int .Values.job.numWorkers }}
    restartPolicy: {{ .Values.job.restartPolicy }}
    template:
      {{- include "llm-finetune.podTemplate" (dict "root" . "role" "Worker") | nindent 6 }}
  {{- end }}
{{- end }}

{{/*
sha256 of the rendered spec (it includes the config's checksum): what the preflight compares with a live job.
backend trainjob: the TrainJob's spec (less the checksum itself) and its runtime's.
*/}}
{{- define "llm-finetune.specChecksum" -}}
{{- if eq .Values.backend "trainjob" }}
{{- printf "%s\n---\n%s" (include "llm-finetune.trainJobSpec" .) (include "llm-finetune.trainingRuntimeSpec" .) | sha256sum }}
{{- else }}
{{- include "llm-finetune.pytorchJobSpec" . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Pod template of a PyTorchJob replica: (dict "root" $ "role" "Master"|"Worker").

Topology (llm-finetune.hasMaster): every pod is an identical Worker (worker-0 is rank 0), except
perPod mode with the claim and several pods, where the Master alone mounts the claim at /output.

* shared mode: every pod mounts the claim read-write (ReadWriteMany for several pods); the
  initializer of the pod with index 0 fills it, the others wait (initialize --shared).
* perPod mode: every pod has its own ephemeral /workspace, filled by its own initializer; the
  claim is at /output on rank 0 (the Master, or the only Worker).
* The init container never fails by its exit code (the operator reads only the pytorch
  container's): it leaves its outcome in /tmp and `launch --initializer-outcome` exits with it.
* Every pod counts its attempts on the run folder when it can write there (core/attempts.py):
  job.runPolicy.backoffLimit bounds the retries the operator itself never counts.
*/}}
{{- define "llm-finetune.podTemplate" -}}
{{- $root := .root }}
{{- $master := eq .role "Master" }}
{{- $hasMaster := include "llm-finetune.hasMaster" $root }}
{{- $perPod := eq $root.Values.storage.mode "perPod" }}
{{- $claim := include "llm-finetune.claimName" $root }}
{{- $outputClaim := "" }}
{{- if and $perPod $claim (or $master (not $hasMaster)) }}
{{- $outputClaim = $claim }}
{{- end -}}
metadata:
  {{- include "llm-finetune.jobPodMetadata" $root | nindent 2 }}
spec:
  {{- include "llm-finetune.jobPodSpec" $root | nindent 2 }}
  initContainers:
    {{- include "llm-finetune.initializerContainer" (dict "root" $root "name" "storage-initializer" "wait" false
          "shared" (not $perPod) "outcome" true "outputClaim" $outputClaim) | nindent 4 }}
  containers:
    {{- include "llm-finetune.trainerContainer" (dict "root" $root "name" "pytorch" "readOnlyWorkspace" false "outputClaim" $outputClaim
          "pytorchjob" (dict "hasMaster" $hasMaster)) | nindent 4 }}
  volumes:
    {{- include "llm-finetune.jobVolumes" (dict "root" $root "readOnlyWorkspace" false "outputClaim" $outputClaim) | nindent 4 }}
{{- end }}

{{/* "true" when the job's pods post their failure as an Event on their PyTorchJob (llm_finetune.core.events). */}}
{{- define "llm-finetune.failureEvents" -}}
{{- if and (eq .Values.backend "pytorchjob") .Values.job.failureEvents }}true{{ end }}
{{- end }}

{{/* Where the init container leaves its outcome for the pytorch container (the pod's /tmp emptyDir). */}}
{{- define "llm-finetune.outcomeFile" -}}
/tmp/llm-finetune/initializer-outcome.json
{{- end }}

{{/*
What a PyTorchJob pod knows about itself (llm_finetune.core.pod): its name (attempt ledger,
Events), its replica index (the label the operator sets on every pod it creates; index 0 fills
a shared volume) and its namespace.
*/}}
{{- define "llm-finetune.podIdentityEnv" -}}
- name: LLM_FINETUNE_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: LLM_FINETUNE_POD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['training.kubeflow.org/replica-index']
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
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
{{- include "llm-finetune.podSpecCommon" (dict "root" . "serviceAccountName" (include "llm-finetune.serviceAccountName" .)
      "automountToken" (or $v.serviceAccount.automountServiceAccountToken (eq (include "llm-finetune.failureEvents" .) "true"))) }}
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

{{/*
The storage initializer: (dict "root" $ "name" <container name> "wait" <bool: only wait for another pod's download>
"shared" <bool: pod 0 downloads, the others wait> "outcome" <bool: a PyTorchJob pod: the outcome to the pytorch
container, the pod's identity env> "outputClaim" <claim or "": mounted at /output too>).
*/}}
{{- define "llm-finetune.initializerContainer" -}}
{{- $v := .root.Values }}
{{- $flags := .wait | ternary (list "--wait") (list) }}
{{- if .shared }}
{{- $flags = append $flags "--shared" }}
{{- end }}
{{- $own := list }}
{{- if .outcome }}
{{- $flags = concat $flags (list "--outcome" (include "llm-finetune.outcomeFile" .root)) }}
{{- $own = include "llm-finetune.podIdentityEnv" .root | fromYamlArray }}
{{- end }}
{{- $mounts := include "llm-finetune.workspaceMounts" .wait | fromYamlArray }}
{{- if .outputClaim }}
{{- $mounts = append $mounts (dict "name" "output" "mountPath" (include "llm-finetune.claimMountPath" .root)) }}
{{- end }}
{{- $env := include "llm-finetune.env" (dict "root" .root "extra" $v.initializer.env "where" "initializer.env" "reserved" $own) }}
{{- if $own }}
{{- $env = printf "%s\n%s" (toYaml $own) $env }}
{{- end }}
{{- include "llm-finetune.container" (dict "root" .root "name" .name "image" $v.images.initializer
      "command" "initialize" "flags" $flags "env" $env "resources" $v.initializer.resources "mounts" $mounts) }}
{{- end }}

{{/*
The trainer: (dict "root" $ "name" <container name> "readOnlyWorkspace" <bool> "outputClaim" <claim or "">
"spec" <false: no command, env and resources: a TrainJob's spec.trainer carries them>
"pytorchjob" <(dict "hasMaster" ...): a PyTorchJob's pytorch container: the initializer's outcome, the
pytorchjob-port, the rendezvous and identity env, an ephemeral-storage request>).
*/}}
{{- define "llm-finetune.trainerContainer" -}}
{{- $v := .root.Values }}
{{- $spec := ne (toString .spec) "false" }}
{{- $after := list (dict "name" "dshm" "mountPath" "/dev/shm") }}
{{- if .outputClaim }}
{{- $after = prepend $after (dict "name" "output" "mountPath" (include "llm-finetune.claimMountPath" .root)) }}
{{- end }}
{{- $env := $spec | ternary (include "llm-finetune.trainerEnv" .root) "" }}
{{- $flags := list }}
{{- $ports := list }}
{{- $resources := $v.job.resources }}
{{- with .pytorchjob }}
{{- $env = include "llm-finetune.pytorchjobTrainerEnv" (dict "root" $.root "hasMaster" .hasMaster) }}
{{- $flags = list "--initializer-outcome" (include "llm-finetune.outcomeFile" $.root) }}
{{- $ports = list (dict "name" "pytorchjob-port" "containerPort" 23456 "protocol" "TCP") }}
{{- $resources = include "llm-finetune.trainerResources" $.root | fromYaml }}
{{- end }}
{{- include "llm-finetune.container" (dict "root" .root "name" .name "image" $v.images.trainer "command" ($spec | ternary "launch" "")
      "flags" $flags "ports" $ports "env" $env "resources" $resources
      "mounts" (include "llm-finetune.workspaceMounts" .readOnlyWorkspace | fromYamlArray) "mountsAfter" $after) }}
{{- end }}

{{/* Trainer resources: job.resources, plus an ephemeral-storage request of job.tmpSizeLimit (what /tmp may hold). */}}
{{- define "llm-finetune.trainerResources" -}}
{{- $res := include "llm-finetune.resources" .Values.job.resources | fromYaml }}
{{- if .Values.job.tmpSizeLimit }}
{{- $requests := $res.requests | default dict }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" (toString .Values.job.tmpSizeLimit) }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- end }}
{{- toYaml $res }}
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
{{ include "llm-finetune.podVolumes" (dict "configMap" (include "llm-finetune.configMapName" $root) "tmpSizeLimit" $v.job.tmpSizeLimit) }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.job.shmSizeLimit }}
{{- end }}


{{/* Env of the trainer container: the shutdown timeout, then the env of every job container. */}}
{{- define "llm-finetune.trainerEnv" -}}
{{- $own := include "llm-finetune.shutdownTimeoutEnv" . -}}
{{ $own }}
{{ include "llm-finetune.env" (dict "root" . "extra" .Values.job.env "where" "job.env" "reserved" ($own | fromYamlArray)) }}
{{- end }}

{{/* Seconds torchrun gives the workers to checkpoint after SIGTERM (inside the pod's grace period). */}}
{{- define "llm-finetune.shutdownTimeoutEnv" -}}
{{- $grace := int .Values.job.terminationGracePeriodSeconds -}}
- name: TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  value: {{ min $grace (max 5 (sub $grace 10)) | quote }}
{{- end }}

{{/*
Env of a PyTorchJob's pytorch container: (dict "root" $ "hasMaster" <"true" or "">). The shutdown
timeout; torchrun's static rendezvous (without a Master the operator sets no PET_MASTER_ADDR,
PET_MASTER_PORT, PET_NODE_RANK: worker-0 is the rendezvous host, each pod's rank its replica
index; its name resolves once worker-0 is Ready, and torch retries until the timeout); Events;
the pod's identity; then the env of every job container.
*/}}
{{- define "llm-finetune.pytorchjobTrainerEnv" -}}
{{- $v := .root.Values -}}
{{- $own := include "llm-finetune.shutdownTimeoutEnv" .root | fromYamlArray }}
{{- if not .hasMaster }}
{{- $own = concat $own (list (dict "name" "PET_MASTER_ADDR" "value" (printf "%s-worker-0" (include "llm-finetune.jobName" .root)))
      (dict "name" "PET_MASTER_PORT" "value" "23456")
      (dict "name" "PET_NODE_RANK" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.labels['training.kubeflow.org/replica-index']")))) }}
{{- end }}
{{- $own = concat $own (list (dict "name" "PET_RDZV_CONF" "value" (printf "timeout=%d" (int64 $v.job.rendezvousTimeoutSeconds)))
      (dict "name" "LLM_FINETUNE_JOB_EVENTS" "value" (eq (include "llm-finetune.failureEvents" .root) "true" | toString)))
      (include "llm-finetune.podIdentityEnv" .root | fromYamlArray) -}}
{{ toYaml $own }}
{{ include "llm-finetune.env" (dict "root" .root "extra" $v.job.env "where" "job.env" "reserved" $own) }}
{{- end }}
