{{/*
Expand the name of the chart.
*/}}
{{- define "edgeops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "edgeops.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "edgeops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "edgeops.labels" -}}
helm.sh/chart: {{ include "edgeops.chart" . }}
{{ include "edgeops.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgeops
{{- end }}

{{/*
Selector labels
*/}}
{{- define "edgeops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgeops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component's objects. Call with (dict "ctx" $ "component" "minio").
*/}}
{{- define "edgeops.componentLabels" -}}
{{ include "edgeops.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "minio").
Also the only labels on volumeClaimTemplates, which cannot change after creation.
*/}}
{{- define "edgeops.componentSelectorLabels" -}}
{{ include "edgeops.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Name of one component's objects: <fullname>-<component>, at most 52 characters,
so that StatefulSet pods' controller-revision-hash labels and the "-headless"
Services stay within 63.
Call with (dict "ctx" $ "component" "minio").
*/}}
{{- define "edgeops.componentName" -}}
{{- $prefix := include "edgeops.fullname" .ctx | trunc (int (sub 51 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .component }}
{{- end }}

{{- define "edgeops.minio.fullname" -}}
{{- include "edgeops.componentName" (dict "ctx" . "component" "minio") }}
{{- end }}

{{- define "edgeops.mysql.fullname" -}}
{{- include "edgeops.componentName" (dict "ctx" . "component" "mysql") }}
{{- end }}

{{- define "edgeops.mlflow.fullname" -}}
{{- include "edgeops.componentName" (dict "ctx" . "component" "mlflow") }}
{{- end }}

{{- define "edgeops.mosquitto.fullname" -}}
{{- include "edgeops.componentName" (dict "ctx" . "component" "mosquitto") }}
{{- end }}

{{- define "edgeops.fleet.fullname" -}}
{{- include "edgeops.componentName" (dict "ctx" . "component" "fleet") }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "edgeops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "edgeops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: repository:tag. Call with the component's image values.
*/}}
{{- define "edgeops.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/*
Secret with the MinIO root credentials (keys root-user, root-password).
*/}}
{{- define "edgeops.minio.secretName" -}}
{{- default (include "edgeops.minio.fullname" .) .Values.minio.auth.existingSecret }}
{{- end }}

{{/*
The S3 identities besides MinIO's root user, each limited by a MinIO policy to one bucket:
pipeline (objects in buckets.raw), publisher (objects in buckets.ota), mlflow (objects in buckets.staging).
*/}}
{{- define "edgeops.minio.identities" -}}
{{- list "pipeline" "publisher" "mlflow" | toJson }}
{{- end }}

{{/*
Secret with one S3 identity's credentials (keys access-key, secret-key): minio.identities.<identity>.existingSecret,
else the generated <fullname>-minio-<identity>. Call with (dict "ctx" $ "identity" "pipeline").
*/}}
{{- define "edgeops.minio.identitySecretName" -}}
{{- $values := index .ctx.Values.minio.identities .identity }}
{{- default (include "edgeops.componentName" (dict "ctx" .ctx "component" (printf "minio-%s" .identity))) $values.existingSecret }}
{{- end }}

{{/*
MinIO policy (JSON) of one S3 identity: list its bucket, read and write its objects (delete only with
"delete" true), nothing else. Call with (dict "bucket" "raw" "delete" false).
*/}}
{{- define "edgeops.minio.policy" -}}
{{- $objectActions := list "s3:GetObject" "s3:PutObject" "s3:AbortMultipartUpload" "s3:ListMultipartUploadParts" }}
{{- if .delete }}
{{- $objectActions = append $objectActions "s3:DeleteObject" }}
{{- end }}
{{- $bucketStatement := dict "Effect" "Allow" "Action" (list "s3:GetBucketLocation" "s3:ListBucket" "s3:ListBucketMultipartUploads") "Resource" (list (printf "arn:aws:s3:::%s" .bucket)) }}
{{- $objectStatement := dict "Effect" "Allow" "Action" $objectActions "Resource" (list (printf "arn:aws:s3:::%s/*" .bucket)) }}
{{- dict "Version" "2012-10-17" "Statement" (list $bucketStatement $objectStatement) | toJson }}
{{- end }}

{{/*
Secret with the MySQL passwords (keys mysql-root-password, mysql-password).
*/}}
{{- define "edgeops.mysql.secretName" -}}
{{- default (include "edgeops.mysql.fullname" .) .Values.mysql.auth.existingSecret }}
{{- end }}

{{/*
In-cluster S3 endpoint of the chart's MinIO.
*/}}
{{- define "edgeops.minio.endpoint" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "edgeops.minio.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.minio.service.apiPort) }}
{{- end }}

{{/*
MLflow's backend store: host, port, database, user and the Secret/key of the password.
Each resolves to the chart's MySQL unless set under mlflow.database.
*/}}
{{- define "edgeops.mlflow.dbHost" -}}
{{- if .Values.mlflow.database.host }}
{{- .Values.mlflow.database.host }}
{{- else if .Values.mysql.enabled }}
{{- printf "%s.%s.svc.%s" (include "edgeops.mysql.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- fail "mlflow.database.host is required when mysql.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.mlflow.dbPort" -}}
{{- if .Values.mlflow.database.host }}
{{- .Values.mlflow.database.port | int }}
{{- else }}
{{- .Values.mysql.service.port | int }}
{{- end }}
{{- end }}

{{- define "edgeops.mlflow.dbSecretName" -}}
{{- if .Values.mlflow.database.existingSecret }}
{{- .Values.mlflow.database.existingSecret }}
{{- else if .Values.mysql.enabled }}
{{- include "edgeops.mysql.secretName" . }}
{{- else }}
{{- fail "mlflow.database.existingSecret is required when mysql.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.mlflow.s3Endpoint" -}}
{{- if .Values.mlflow.s3.endpoint }}
{{- .Values.mlflow.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- include "edgeops.minio.endpoint" . }}
{{- else }}
{{- fail "mlflow.s3.endpoint is required when minio.enabled is false" }}
{{- end }}
{{- end }}

{{/*
MLflow's S3 credentials: mlflow.s3.existingSecret with the keys named under mlflow.s3, else the chart's
MinIO identity "mlflow" (keys access-key, secret-key), never MinIO's root user.
*/}}
{{- define "edgeops.mlflow.s3SecretName" -}}
{{- if .Values.mlflow.s3.existingSecret }}
{{- .Values.mlflow.s3.existingSecret }}
{{- else if .Values.minio.enabled }}
{{- include "edgeops.minio.identitySecretName" (dict "ctx" . "identity" "mlflow") }}
{{- else }}
{{- fail "mlflow.s3.existingSecret is required when minio.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.mlflow.s3AccessKeyIdKey" -}}
{{- if .Values.mlflow.s3.existingSecret }}{{ .Values.mlflow.s3.accessKeyIdKey }}{{ else }}access-key{{ end }}
{{- end }}

{{- define "edgeops.mlflow.s3SecretAccessKeyKey" -}}
{{- if .Values.mlflow.s3.existingSecret }}{{ .Values.mlflow.s3.secretAccessKeyKey }}{{ else }}secret-key{{ end }}
{{- end }}

{{/*
Host headers MLflow accepts: its Service under every in-cluster name, any port,
localhost for kubectl port-forward, and mlflow.allowedHosts.
*/}}
{{- define "edgeops.mlflow.allowedHosts" -}}
{{- $svc := include "edgeops.mlflow.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) "localhost" "127.0.0.1" }}
{{- $all := list }}
{{- range $hosts }}
{{- $all = append $all . }}
{{- $all = append $all (printf "%s:*" .) }}
{{- end }}
{{- join "," (concat $all .Values.mlflow.allowedHosts) }}
{{- end }}

{{/*
Scheduling of one component: its own nodeSelector/tolerations/affinity, else the
chart-wide ones. Call with (dict "ctx" $ "values" .Values.minio).
*/}}
{{- define "edgeops.scheduling" -}}
{{- with (.values.nodeSelector | default .ctx.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.values.affinity | default .ctx.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.values.tolerations | default .ctx.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod-level settings every pod shares.
*/}}
{{- define "edgeops.podCommon" -}}
serviceAccountName: {{ include "edgeops.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- /* No Service env vars: a Service named edgeops-mlflow would inject EDGEOPS_MLFLOW_PORT=tcp://…, which edgeops.settings reads. */}}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
In-cluster tracking URI of the chart's MLflow.
*/}}
{{- define "edgeops.mlflow.trackingUri" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "edgeops.mlflow.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.mlflow.service.port) }}
{{- end }}

{{/*
The wiring around Kubeflow Pipelines (templates/wiring/, rendered when wiring.enabled): the namespace of KFP's
pipeline tasks and the release signer's namespace. Fixed names: the compiled cluster pipeline
(edgeops.settings.ClusterConfig), the admission policy and `make kfp-install` refer to them.
*/}}
{{- define "edgeops.wiring.kfpNamespace" -}}
kubeflow
{{- end }}

{{- define "edgeops.wiring.releaseNamespace" -}}
edgeops-release
{{- end }}

{{/*
The copy of one S3 identity that `make kfp-install` makes beside the workloads of another namespace (keys
access_key, secret_key; ClusterConfig.s3_secret and publisher_s3_secret). Call with the identity's name.
*/}}
{{- define "edgeops.wiring.s3Secret" -}}
{{- printf "edgeops-s3-%s" . }}
{{- end }}

{{/*
The online TUF keys and root metadata (`make release-keys-secret`; ClusterConfig.release_keys_secret).
*/}}
{{- define "edgeops.wiring.releaseKeysSecret" -}}
edgeops-release-keys
{{- end }}

{{/*
What the wiring needs from the rest of the chart, checked before anything renders: MLflow, and an S3 identity
Secret the chart generates (or one named under minio.identities) for the pipeline and the publisher.
*/}}
{{- define "edgeops.wiring.check" -}}
{{- if not .Values.mlflow.enabled }}
{{- fail "wiring.enabled needs mlflow.enabled: pipeline tasks and the release signer talk to the chart's MLflow" }}
{{- end }}
{{- range $identity := list "pipeline" "publisher" }}
{{- if not (or $.Values.minio.enabled (index $.Values.minio.identities $identity).existingSecret) }}
{{- fail (printf "wiring.enabled with minio.enabled false needs minio.identities.%s.existingSecret" $identity) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels of a settings ConfigMap of the wiring: which S3 identity the workloads of its namespace get, and,
as an annotation, the release's Secret `make kfp-install` copies it from (<namespace>/<name>).
Call with (dict "ctx" $ "identity" "pipeline").
*/}}
{{- define "edgeops.wiring.identityMetadata" -}}
labels:
  {{- include "edgeops.componentLabels" (dict "ctx" .ctx "component" "wiring") | nindent 2 }}
  edgeops.io/s3-identity: {{ .identity }}
annotations:
  edgeops.io/s3-identity-secret: {{ printf "%s/%s" .ctx.Release.Namespace (include "edgeops.minio.identitySecretName" (dict "ctx" .ctx "identity" .identity)) }}
{{- end }}

{{/*
Secret of the devices' broker (keys fleet-password: the fleet service's broker password in plain text;
devices: hashed password-file lines of the devices): mosquitto.auth.existingSecret, else the generated one.
*/}}
{{- define "edgeops.mosquitto.secretName" -}}
{{- default (include "edgeops.mosquitto.fullname" .) .Values.mosquitto.auth.existingSecret }}
{{- end }}

{{/*
The fleet service's broker: host, port, user and the Secret/key of its password. Each resolves to the chart's
Mosquitto unless fleet.mqtt.host is set.
*/}}
{{- define "edgeops.fleet.mqttHost" -}}
{{- if .Values.fleet.mqtt.host }}
{{- .Values.fleet.mqtt.host }}
{{- else if .Values.mosquitto.enabled }}
{{- printf "%s.%s.svc.%s" (include "edgeops.mosquitto.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- fail "fleet.mqtt.host is required when mosquitto.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.fleet.mqttPort" -}}
{{- if .Values.fleet.mqtt.host }}
{{- .Values.fleet.mqtt.port | int }}
{{- else }}
{{- .Values.mosquitto.service.port | int }}
{{- end }}
{{- end }}

{{- define "edgeops.fleet.mqttUsername" -}}
{{- .Values.fleet.mqtt.username | default .Values.mosquitto.auth.fleetUsername }}
{{- end }}

{{- define "edgeops.fleet.mqttSecretName" -}}
{{- if .Values.fleet.mqtt.existingSecret }}
{{- .Values.fleet.mqtt.existingSecret }}
{{- else if .Values.fleet.mqtt.host }}
{{- fail "fleet.mqtt.existingSecret is required when fleet.mqtt.host is set" }}
{{- else if .Values.mosquitto.enabled }}
{{- include "edgeops.mosquitto.secretName" . }}
{{- else }}
{{- fail "fleet.mqtt.existingSecret is required when mosquitto.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.fleet.mqttPasswordKey" -}}
{{- if .Values.fleet.mqtt.existingSecret }}{{ .Values.fleet.mqtt.passwordKey }}{{ else }}fleet-password{{ end }}
{{- end }}

{{/*
The fleet service's database: the chart's MySQL unless fleet.database.host is set. On the chart's MySQL a
container of the MySQL pod creates the database and the user (mysql-statefulset.yaml).
*/}}
{{- define "edgeops.fleet.usesChartMysql" -}}
{{- if and (not .Values.fleet.database.host) .Values.mysql.enabled }}true{{ end }}
{{- end }}

{{- define "edgeops.fleet.dbHost" -}}
{{- if .Values.fleet.database.host }}
{{- .Values.fleet.database.host }}
{{- else if .Values.mysql.enabled }}
{{- printf "%s.%s.svc.%s" (include "edgeops.mysql.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- fail "fleet.database.host is required when mysql.enabled is false" }}
{{- end }}
{{- end }}

{{- define "edgeops.fleet.dbPort" -}}
{{- if .Values.fleet.database.host }}
{{- .Values.fleet.database.port | int }}
{{- else }}
{{- .Values.mysql.service.port | int }}
{{- end }}
{{- end }}

{{/*
Secret with the fleet service's database password: fleet.database.existingSecret, else the generated
<fullname>-fleet-database (key password; only for the chart's MySQL).
*/}}
{{- define "edgeops.fleet.dbSecretName" -}}
{{- if .Values.fleet.database.existingSecret }}
{{- .Values.fleet.database.existingSecret }}
{{- else if include "edgeops.fleet.usesChartMysql" . }}
{{- include "edgeops.componentName" (dict "ctx" . "component" "fleet-database") }}
{{- else }}
{{- fail "fleet.database.existingSecret is required with an external database (fleet.database.host or mysql.enabled false)" }}
{{- end }}
{{- end }}

{{- define "edgeops.fleet.apiSecretName" -}}
{{- default (include "edgeops.componentName" (dict "ctx" . "component" "fleet-api")) .Values.fleet.api.existingSecret }}
{{- end }}

{{- define "edgeops.fleet.apiTokenKey" -}}
{{- if .Values.fleet.api.existingSecret }}{{ .Values.fleet.api.tokenKey }}{{ else }}token{{ end }}
{{- end }}

{{- define "edgeops.fleet.dbPasswordKey" -}}
{{- if .Values.fleet.database.existingSecret }}{{ .Values.fleet.database.passwordKey }}{{ else }}password{{ end }}
{{- end }}

{{/*
What the fleet service needs from the rest of the chart, checked before anything renders: a database user of its
own on the chart's MySQL (the MySQL pod sets its password on every start, so sharing MLflow's or root would
overwrite theirs).
*/}}
{{- define "edgeops.fleet.check" -}}
{{- if include "edgeops.fleet.usesChartMysql" . }}
{{- if or (eq .Values.fleet.database.username .Values.mysql.auth.username) (eq .Values.fleet.database.username "root") }}
{{- fail (printf "fleet.database.username %q is taken (MLflow's user or root): the fleet service needs a user of its own" .Values.fleet.database.username) }}
{{- end }}
{{- if eq .Values.fleet.database.name .Values.mysql.auth.database }}
{{- fail (printf "fleet.database.name %q is MLflow's database: the fleet service needs a database of its own" .Values.fleet.database.name) }}
{{- end }}
{{- end }}
{{- end }}
