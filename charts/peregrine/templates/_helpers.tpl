{{/* Name of the chart, or nameOverride. */}}
{{- define "peregrine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: the release name, with the chart name unless it already holds it. */}}
{{- define "peregrine.fullname" -}}
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

{{- define "peregrine.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peregrine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "peregrine.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "peregrine.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: peregrine
{{- end }}

{{- define "peregrine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "peregrine.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "peregrine.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret of the intake's server certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "peregrine.serverSecret" -}}
{{- default (printf "%s-intake-tls" (include "peregrine.fullname" .)) .Values.intake.tls.existingSecret }}
{{- end }}

{{/* Secret of Falco's client certificate, in falco.namespace. */}}
{{- define "peregrine.clientSecret" -}}
{{- default (printf "%s-falco-client" (include "peregrine.fullname" .)) .Values.falco.clientSecret.name }}
{{- end }}

{{- define "peregrine.tokenSecret" -}}
{{- default (printf "%s-intake-tokens" (include "peregrine.fullname" .)) .Values.intake.tokens.existingSecret }}
{{- end }}

{{/* DNS names of the intake Service, and localhost for `kubectl port-forward`. */}}
{{- define "peregrine.intakeDnsNames" -}}
{{- $svc := printf "%s-intake" (include "peregrine.fullname" .) }}
{{- $names := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) "localhost" }}
{{- concat $names .Values.intake.tls.extraDnsNames | toJson }}
{{- end }}

{{- define "peregrine.intakeURL" -}}
{{- printf "%s://%s-intake.%s.svc:%d/v1/falco" (ternary "https" "http" .Values.intake.tls.enabled) (include "peregrine.fullname" .) .Release.Namespace (int .Values.intake.port) }}
{{- end }}

{{/* Whether the chart makes the certificates itself with Helm's crypto functions. */}}
{{- define "peregrine.helmCerts" -}}
{{- if and .Values.intake.tls.enabled (not .Values.intake.tls.existingSecret) (not .Values.certManager.enabled) }}true{{ end }}
{{- end }}

{{- define "peregrine.clientSecretNamespace" -}}
{{- if and .Values.certManager.enabled (not .Values.certManager.issuerRef) }}
{{- .Release.Namespace }}
{{- else }}
{{- default .Values.falco.namespace .Values.falco.clientSecret.namespace }}
{{- end }}
{{- end }}
