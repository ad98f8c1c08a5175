{{/*
What every pod and container of the chart shares. Each pod the chart renders (the PyTorchJob's
Master and Workers in _podtemplate.tpl, the preflight Job's pod in hooks/preflight.yaml, the
helm-test Pod in tests/verify.yaml) is built from these, so that a security or mount change
is made once:

  llm-finetune.podAnnotations  the pod's annotations over sidecar.istio.io/inject: "false"
  llm-finetune.podSpecCommon   serviceAccountName, automountServiceAccountToken, imagePullSecrets,
                               the pod securityContext
  llm-finetune.container       one container: image, pull policy, `llm-finetune <command> --config`,
                               env, resources, securityContext, termination message, mounts
                               (the config read-only and the writable /tmp among them)
  llm-finetune.podVolumes      the volumes behind those two mounts: config and tmp
  llm-finetune.secretRefs      every Secret key the pods read: the job containers' env and the
                               preflight hook's PREFLIGHT_SECRETS and Role both come from it
The claim's mount path is llm-finetune.claimMountPath (_helpers.tpl).
*/}}

{{/*
Pod annotations: (dict "extra" <map or nil>). Istio's sidecar would keep a finished Job's pod
running, so no pod gets one unless extra says otherwise.
*/}}
{{- define "llm-finetune.podAnnotations" -}}
{{- toYaml (merge (dict) (.extra | default dict) (dict "sidecar.istio.io/inject" "false")) }}
{{- end }}

{{/*
Pod spec fields every pod sets:
(dict "root" $ "serviceAccountName" <name or ""> "automountToken" <bool>).
*/}}
{{- define "llm-finetune.podSpecCommon" -}}
{{- with .serviceAccountName -}}
serviceAccountName: {{ . }}
{{ end -}}
automountServiceAccountToken: {{ .automountToken }}
{{- with (include "llm-finetune.imagePullSecrets" .root) }}
imagePullSecrets:
  {{- . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/*
A container running `llm-finetune <command> --config <configDir>/config.yaml <flags>`:
(dict "root" $ "name" <name> "image" .Values.images.<name> "command" <subcommand>
      "flags" <list, optional> "env" <EnvVar list as YAML text> "resources" <resources value>
      (command "": no command, env and resources: a TrainJob's spec.trainer sets them)
      "configDir" <default /etc/llm-finetune> "ports" <list of ContainerPort, optional>
      "mounts" <VolumeMounts before config and /tmp> "mountsAfter" <VolumeMounts after them>).
Mounts are dicts of name, mountPath and readOnly. The root filesystem is read-only (the
securityContext): /tmp is the one writable place, so HOME and the caches live there.
*/}}
{{- define "llm-finetune.container" -}}
{{- $configDir := .configDir | default "/etc/llm-finetune" }}
{{- $common := list (dict "name" "config" "mountPath" $configDir "readOnly" true) (dict "name" "tmp" "mountPath" "/tmp") -}}
- name: {{ .name }}
  image: {{ include "llm-finetune.image" (dict "image" .image "root" .root) }}
  imagePullPolicy: {{ .image.pullPolicy }}
  {{- if .command }}
  command:
    {{- toYaml (concat (list "llm-finetune" .command "--config" (printf "%s/config.yaml" $configDir)) (.flags | default list)) | nindent 4 }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    {{- .env | nindent 4 }}
  resources:
    {{- include "llm-finetune.resources" .resources | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
  volumeMounts:
    {{- range (concat (.mounts | default list) $common (.mountsAfter | default list)) }}
    - name: {{ .name }}
      mountPath: {{ .mountPath }}
      {{- if .readOnly }}
      readOnly: true
      {{- end }}
    {{- end }}
{{- end }}

{{/*
The volumes of the config and /tmp mounts of llm-finetune.container:
(dict "configMap" <name> "tmpSizeLimit" <quantity, optional>). Past its sizeLimit the kubelet
evicts the pod, instead of the node running out of disk for every pod on it.
*/}}
{{- define "llm-finetune.podVolumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tmp
  {{- if .tmpSizeLimit }}
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}

{{/*
Every Secret key the job's pods read, in env order: a JSON list of {env, secret, key}
(read it with fromJsonArray). Secrets are referenced, never copied.
*/}}
{{- define "llm-finetune.secretRefs" -}}
{{- $v := .Values }}
{{- $refs := list }}
{{- with $v.secrets.hf.existingSecret }}
{{- $refs = append $refs (dict "env" "HF_TOKEN" "secret" . "key" $v.secrets.hf.tokenKey) }}
{{- end }}
{{- with $v.secrets.s3.existingSecret }}
{{- $refs = append $refs (dict "env" "AWS_ACCESS_KEY_ID" "secret" . "key" $v.secrets.s3.accessKeyIdKey) }}
{{- $refs = append $refs (dict "env" "AWS_SECRET_ACCESS_KEY" "secret" . "key" $v.secrets.s3.secretAccessKeyKey) }}
{{- if $v.secrets.s3.sessionTokenKey }}
{{- $refs = append $refs (dict "env" "AWS_SESSION_TOKEN" "secret" . "key" $v.secrets.s3.sessionTokenKey) }}
{{- end }}
{{- end }}
{{- toJson $refs }}
{{- end }}

{{/*
Env of every job container: (dict "root" $ "extra" <list of EnvVar> "where" <its values path>
"reserved" <EnvVars the caller sets besides>). Writable homes and
caches under /tmp (read-only root filesystem), then secrets by reference only, then extra.
*/}}
{{- define "llm-finetune.env" -}}
{{- $chart := include "llm-finetune.chartEnv" . }}
{{- include "llm-finetune.checkEnvNames" (dict "chart" (concat (.reserved | default list) ($chart | fromYamlArray)) "extra" .extra "where" .where) }}
{{- $chart }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The env the chart sets on every job container (the first part of llm-finetune.env). */}}
{{- define "llm-finetune.chartEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: /tmp/hf-home
- name: TRITON_CACHE_DIR
  value: /tmp/.triton
- name: MPLCONFIGDIR
  value: /tmp/.mpl
- name: HF_HUB_DISABLE_PROGRESS_BARS
  value: "1"
- name: HF_HUB_DISABLE_TELEMETRY
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- range (include "llm-finetune.secretRefs" .root | fromJsonArray) }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- end }}

{{/*
User env entries whose names the chart already sets, or that repeat:
(dict "chart" <EnvVar list> "extra" <user's EnvVar list> "where" <values path>). A container's env
is a list keyed by name: server-side apply refuses a name twice, and elsewhere the later entry wins.
llm_finetune.validate.envvars refuses the same, naming who sets it.
*/}}
{{- define "llm-finetune.checkEnvNames" -}}
{{- $seen := dict }}
{{- range .chart }}
{{- $_ := set $seen .name "the chart" }}
{{- end }}
{{- range $i, $e := .extra }}
{{- if hasKey $seen $e.name }}
{{- fail (printf "%s[%d].name: %s is already set by %s; remove this entry (a container's env holds each name once)" $.where $i $e.name (get $seen $e.name)) }}
{{- end }}
{{- $_ := set $seen $e.name (printf "%s[%d]" $.where $i) }}
{{- end }}
{{- end }}

{{/*
Container resources with every quantity as a string (the API's and the SDK's type):
{requests, limits}, or the v1 SDK's shorthand {cpu, memory, gpu} (gpu = nvidia.com/gpu,
requests = limits, as kubeflow-training's utils.get_container_spec).
*/}}
{{- define "llm-finetune.resources" -}}
{{- $out := dict }}
{{- if or (hasKey . "requests") (hasKey . "limits") }}
{{- range $kind, $list := . }}
{{- $quantities := dict }}
{{- range $name, $value := $list }}
{{- $_ := set $quantities $name (toString $value) }}
{{- end }}
{{- $_ := set $out $kind $quantities }}
{{- end }}
{{- else if . }}
{{- $quantities := dict }}
{{- range $name, $value := . }}
{{- $_ := set $quantities (eq $name "gpu" | ternary "nvidia.com/gpu" $name) (toString $value) }}
{{- end }}
{{- $out = dict "requests" $quantities "limits" $quantities }}
{{- end }}
{{- toYaml $out }}
{{- end }}
