{{/*
Kubeflow Trainer v2 (backend: trainjob): the TrainingRuntime's pieces. Pods are built from the
same helpers as the PyTorchJob's (_podtemplate.tpl). Upstream sources the shapes follow:
kubeflow/trainer v2.3.0, kubernetes-sigs/jobset v0.12.0, cited where used.
*/}}

{{/* Name of the runtime the TrainJob references: the chart's TrainingRuntime (<fullname>) or trainjob.runtimeRef.name. */}}
{{- define "llm-finetune.runtimeName" -}}
{{- default (include "llm-finetune.fullname" .) .Values.trainjob.runtimeRef.name }}
{{- end }}

{{/* Kind of that runtime. */}}
{{- define "llm-finetune.runtimeKind" -}}
{{- ternary .Values.trainjob.runtimeRef.kind "TrainingRuntime" (ne .Values.trainjob.runtimeRef.name "") }}
{{- end }}

{{/*
Exit codes that end the job at once: 1-127, the Training Operator v1's ExitCode rule
(kubeflow/training-operator v1.9.0 pkg/util/train/train_util.go IsRetryableExitCode: >= 128
is retried), so that job.restartPolicy means the same on both backends.
*/}}
{{- define "llm-finetune.permanentExitCodes" -}}
{{- toJson (untilStep 1 128 1) }}
{{- end }}

{{/*
How a replicated job treats a failed pod (job.restartPolicy). The Job itself never retries
(backoffLimit 0); its podFailurePolicy (Kubernetes requires restartPolicy Never in the pod):
  * a disruption (eviction, preemption, node drain: pod condition DisruptionTarget) is ignored:
    the pod is recreated and resumes from the last checkpoint, nothing is counted;
  * ExitCode: an exit code in 1-127 fails the Job with reason PodFailurePolicy, which the
    JobSet's failurePolicy turns into a failed TrainJob (llm-finetune.jobSetFailurePolicy);
  * anything else fails the Job (BackoffLimitExceeded): the JobSet restarts all its jobs.
*/}}
{{- define "llm-finetune.jobFailureSpec" -}}
backoffLimit: 0
{{- if ne .Values.job.restartPolicy "Never" }}
podFailurePolicy:
  rules:
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    {{- if eq .Values.job.restartPolicy "ExitCode" }}
    - action: FailJob
      onExitCodes:
        operator: In
        values: {{ include "llm-finetune.permanentExitCodes" . }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
The JobSet's failurePolicy (jobset v0.12.0 pkg/controllers/failure_policy.go): rules match the
failed Job's reason; no match means RestartJobSet (every job recreated, counted) until
maxRestarts (job.runPolicy.backoffLimit), then the JobSet and so the TrainJob fail.
BlockingRecreate: new pods start only once the old ones are gone, so a pod saving its
checkpoint after SIGTERM never overlaps its successor. restartPolicy Never: no policy, the
first failed Job fails the JobSet.
*/}}
{{- define "llm-finetune.jobSetFailurePolicy" -}}
{{- if ne .Values.job.restartPolicy "Never" }}
failurePolicy:
  maxRestarts: {{ int .Values.job.runPolicy.backoffLimit }}
  restartStrategy: BlockingRecreate
  {{- if eq .Values.job.restartPolicy "ExitCode" }}
  rules:
    - name: PermanentError
      action: FailJobSet
      onJobFailureReasons:
        - PodFailurePolicy
  {{- end }}
{{- end }}
{{- end }}

{{/* A replicated job's Job template: (dict "root" $ "spec" <pod spec YAML without restartPolicy> "labels" <map or nil>). */}}
{{- define "llm-finetune.replicatedJobTemplate" -}}
{{- with .labels }}
metadata:
  labels:
    {{- toYaml . | nindent 4 }}
{{- end }}
spec:
  {{- include "llm-finetune.jobFailureSpec" .root | nindent 2 }}
  template:
    metadata:
      {{- include "llm-finetune.jobPodMetadata" .root | nindent 6 }}
    spec:
      restartPolicy: Never
      {{- .spec | nindent 6 }}
{{- end }}

{{/*
The TrainingRuntime's spec. Its checksum is part of the TrainJob's (llm-finetune.specChecksum): a
TrainJob runs from its own snapshot of the runtime (kubeflow/trainer v2.3.0
pkg/runtime/core/snapshot.go), so a change of what the pods run must be a new TrainJob.

* shared mode: one `init` job runs the storage initializer (one writer on the claim: two
  initializer jobs on a ReadWriteOnce claim could be scheduled on two nodes); `node` waits for
  it (dependsOn Complete). "init": <job>-init-0-0-<5 random> fits 63 characters.
* perPod mode: no job can fill another pod's volume, so every `node` pod runs the initializer as
  an init container into its own ephemeral /workspace.
* The node pods share one pod template (an Indexed Job), so each mounts the claim read-write.
*/}}
{{- define "llm-finetune.trainingRuntimeSpec" -}}
{{- $v := .Values }}
{{- $perPod := eq $v.storage.mode "perPod" }}
{{- $outputClaim := and $perPod (include "llm-finetune.claimName" .) }}
{{- $volumes := include "llm-finetune.jobVolumes" (dict "root" . "readOnlyWorkspace" false "outputClaim" $outputClaim) }}
{{- $initializer := include "llm-finetune.initializerContainer" (dict "root" . "name" "initializer" "wait" false) }}
{{- $node := printf "%s\n%s\ncontainers:\n  %s\nvolumes:\n  %s"
      (include "llm-finetune.jobPodSpec" .)
      ($perPod | ternary (printf "initContainers:\n  %s" ($initializer | nindent 2 | trim)) "")
      (include "llm-finetune.trainerContainer" (dict "root" . "name" "node" "readOnlyWorkspace" false "outputClaim" $outputClaim "spec" false) | nindent 2 | trim)
      ($volumes | nindent 2 | trim) -}}
mlPolicy:
  numNodes: {{ int $v.job.numWorkers }}
  torch: {}
template:
  spec:
    network:
      # torchrun's rendezvous: the pods find each other before they are ready (JobSet's default, explicit)
      publishNotReadyAddresses: true
    {{- with (include "llm-finetune.jobSetFailurePolicy" . | trim) }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- if not (kindIs "invalid" $v.job.runPolicy.ttlSecondsAfterFinished) }}
    ttlSecondsAfterFinished: {{ int $v.job.runPolicy.ttlSecondsAfterFinished }}
    {{- end }}
    replicatedJobs:
      {{- if not $perPod }}
      - name: init
        replicas: 1
        template:
          {{- include "llm-finetune.replicatedJobTemplate" (dict "root" . "spec" (printf "%s\ncontainers:\n  %s\nvolumes:\n  %s" (include "llm-finetune.jobPodSpec" .) ($initializer | nindent 2 | trim) ($volumes | nindent 2 | trim))) | trim | nindent 10 }}
      {{- end }}
      - name: node
        replicas: 1
        {{- if not $perPod }}
        dependsOn:
          - name: init
            status: Complete
        {{- end }}
        template:
          {{- include "llm-finetune.replicatedJobTemplate" (dict "root" . "spec" (regexReplaceAll "\n\n+" $node "\n") "labels" (dict "trainer.kubeflow.org/trainjob-ancestor-step" "trainer")) | trim | nindent 10 }}
{{- end }}

{{/*
The TrainJob's spec but for its checksum env, which must stay the last entry of spec.trainer.env
(trainjob.yaml appends it). spec.trainer carries what the SDK's TrainerClient.train() puts there.
*/}}
{{- define "llm-finetune.trainJobSpec" -}}
{{- $nproc := toString .Values.job.nprocPerNode -}}
runtimeRef:
  apiGroup: trainer.kubeflow.org
  kind: {{ include "llm-finetune.runtimeKind" . }}
  name: {{ include "llm-finetune.runtimeName" . }}
{{- with .Values.job.runPolicy.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ int64 . }}
{{- end }}
trainer:
  image: {{ include "llm-finetune.image" (dict "image" .Values.images.trainer "root" .) }}
  command:
    {{- toYaml (list "llm-finetune" "launch" "--config" "/etc/llm-finetune/config.yaml") | nindent 4 }}
  numNodes: {{ int .Values.job.numWorkers }}
  {{- if ne $nproc "auto" }}
  numProcPerNode: {{ int $nproc }}
  {{- end }}
  {{- with (include "llm-finetune.trainerResources" . | fromYaml) }}
  resourcesPerNode:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    {{- include "llm-finetune.trainerEnv" . | nindent 4 }}
{{- end }}
