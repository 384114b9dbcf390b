{{/* Names and labels shared by every template. */}}

{{- define "kcmail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kcmail.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kcmail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kcmail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* A shard's pods: a name of their own, so that no Deployment's selector matches another's pods. */}}
{{- define "kcmail.shardSelectorLabels" -}}
{{- if .shard -}}
app.kubernetes.io/name: {{ include "kcmail.name" .root }}-shard
app.kubernetes.io/instance: {{ .root.Release.Name }}
kcmail.io/shard: {{ .shard }}
{{- else -}}
{{ include "kcmail.selectorLabels" .root }}
{{- end -}}
{{- end -}}

{{- define "kcmail.shardLabels" -}}
{{- if .shard -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kcmail.shardSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: operator
{{- else -}}
{{ include "kcmail.labels" .root }}
{{- end -}}
{{- end -}}

{{- define "kcmail.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kcmail.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kcmail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kcmail.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kcmail.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The CA bundle file inside the container, or nothing when no bundle is configured. */}}
{{- define "kcmail.caBundlePath" -}}
{{- if or .Values.caBundle.configMap .Values.caBundle.secret -}}
{{- printf "/etc/kcmail/ca/%s" .Values.caBundle.key -}}
{{- end -}}
{{- end -}}

{{/* Rules every namespace kcmail watches needs: its namespaced kinds, their Secrets and Events. */}}
{{- define "kcmail.namespacedRules" -}}
# MailConfigs and KeycloakConnections: kcmail lists and watches MailConfigs, kopf the Connections; both
# patch metadata (the kcmail.io/finalizer, kopf's kcmail.io/ annotations) and write status.
- apiGroups: [kcmail.io]
  resources: [mailconfigs, keycloakconnections]
  verbs: [get, list, watch, patch]
- apiGroups: [kcmail.io]
  resources: [mailconfigs/status, keycloakconnections/status]
  verbs: [patch]
# Secrets: the credentials MailConfigs and Connections refer to; kcmail watches their metadata for rotation.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Rules for cluster-scoped kinds, needed whatever the scope. */}}
{{- define "kcmail.clusterRules" -}}
- apiGroups: [kcmail.io]
  resources: [clusterkeycloakconnections]
  verbs: [get, list, watch, patch]
- apiGroups: [kcmail.io]
  resources: [clusterkeycloakconnections/status]
  verbs: [patch]
# kopf lists and watches Namespaces when it watches a set of them; kcmail reads a namespace's labels to
# check a ClusterKeycloakConnection's allowedNamespaces.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
# kopf discovers the kinds it serves from the CRDs and follows their changes.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end -}}

{{- /* The token bridge's pods: a name of their own, so that neither the operator's selector nor its
metrics Service (component operator) matches them. */}}
{{- define "kcmail.bridgeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kcmail.name" . }}-bridge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kcmail.bridgeLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kcmail.bridgeSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: bridge
{{- end -}}

{{- define "kcmail.bridgeName" -}}
{{- printf "%s-bridge" (include "kcmail.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* "true" when the operator keeps the bridge's clients itself (bridge.enabled, no bridge.clientsSecret),
else empty. */}}
{{- define "kcmail.bridgeManaged" -}}
{{- if and .Values.bridge.enabled (not .Values.bridge.clientsSecret) -}}
true
{{- end -}}
{{- end -}}

{{- /* The bridge's registry: a Secret holding a random seed and one key per MailConfig, which the operator
creates and patches at run time and the bridge reads. No template renders it: helm would own its data. */}}
{{- define "kcmail.bridgeRegistryName" -}}
{{- printf "%s-bridge-registry" (include "kcmail.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The bridge's token endpoint for the operator's --bridge-url: bridge.url, else the bridge's Service. */}}
{{- define "kcmail.bridgeURL" -}}
{{- if .Values.bridge.url -}}
{{- .Values.bridge.url -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%v/token" (include "kcmail.bridgeName" .) .Release.Namespace .Values.bridge.port -}}
{{- end -}}
{{- end -}}
