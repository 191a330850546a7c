{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "portcullis.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "portcullis.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "portcullis.selector" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portcullis.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "portcullis.controller" -}}{{ include "portcullis.fullname" . }}-controller{{- end -}}
{{- define "portcullis.gateway" -}}{{ include "portcullis.fullname" . }}-gateway{{- end -}}

{{/* The secure defaults every Portcullis container runs with. */}}
{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "portcullis.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "portcullis.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers, or every pod of the namespace when none are given. */}}
{{- define "portcullis.peers" -}}
{{- if . }}
{{- toYaml . }}
{{- else }}
- podSelector: {}
{{- end }}
{{- end -}}

{{/* The private CA bundle for JWKS URLs, when configured. */}}
{{- define "portcullis.jwksCAMount" -}}
{{- if .Values.jwksCA.configMap }}
volumeMounts:
  - name: jwks-ca
    mountPath: /etc/portcullis/jwks-ca
    readOnly: true
{{- end }}
{{- end -}}

{{- define "portcullis.jwksCAVolume" -}}
{{- if .Values.jwksCA.configMap }}
volumes:
  - name: jwks-ca
    configMap:
      name: {{ .Values.jwksCA.configMap }}
{{- end }}
{{- end -}}

{{/*
Gateway API wiring settings for the controller (PORTCULLIS_GATEWAY_API_SETTINGS): the chart's
integration map, and this release's gateway Service as the authorizer of its gateway.
*/}}
{{- define "portcullis.gatewayAPISettings" -}}
{{- $g := .Values.controller.gatewayAPI -}}
{{- $authorizers := dict -}}
{{- if and .Values.gateway.enabled .Values.gateway.grpcPort -}}
{{- $_ := set $authorizers .Values.gateway.name (dict "namespace" .Release.Namespace "name" (include "portcullis.gateway" .) "port" (int .Values.gateway.grpcPort)) -}}
{{- end -}}
{{- toJson (dict "enabled" $g.enabled "integrations" $g.integrations "istioProvider" $g.istioProvider "authorizers" $authorizers) -}}
{{- end }}
