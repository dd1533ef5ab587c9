{{/*
Expand the name of the chart.
*/}}
{{- define "nextunicorn-compose.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "nextunicorn-compose.fullname" -}}
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
{{- define "nextunicorn-compose.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "nextunicorn-compose.labels" -}}
helm.sh/chart: {{ include "nextunicorn-compose.chart" . }}
{{ include "nextunicorn-compose.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nextunicorn-compose
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "nextunicorn-compose.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nextunicorn-compose.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component: (dict "ctx" $ "component" "operator").
*/}}
{{- define "nextunicorn-compose.componentLabels" -}}
{{ include "nextunicorn-compose.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nextunicorn-compose.componentSelectorLabels" -}}
{{ include "nextunicorn-compose.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The metadata.annotations block every object carries (commonAnnotations), merged with extra ones:
(dict "ctx" $ "extra" .someMap).
*/}}
{{- define "nextunicorn-compose.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .extra)) (deepCopy (default (dict) .ctx.Values.commonAnnotations)) }}
{{- with $all }}
{{- printf "\n  annotations:\n%s" (toYaml . | indent 4) }}
{{- end }}
{{- end }}

{{/*
Service account names.
*/}}
{{- define "nextunicorn-compose.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "nextunicorn-compose.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nextunicorn-compose.inferenceServiceAccountName" -}}
{{- default (printf "%s-inference" (include "nextunicorn-compose.fullname" .)) .Values.inference.serviceAccount.name }}
{{- end }}

{{- define "nextunicorn-compose.gatewayServiceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (printf "%s-gateway" (include "nextunicorn-compose.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images: (dict "ctx" $ "image" .Values.operator.image).
*/}}
{{- define "nextunicorn-compose.image" -}}
{{- $repo := .image.repository }}
{{- with .ctx.Values.imageRegistry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The peering object's name.
*/}}
{{- define "nextunicorn-compose.peeringName" -}}
{{- default (include "nextunicorn-compose.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/*
Namespaces the operator watches, as a JSON list: [] in cluster-wide mode (clusterWide: true),
else watchNamespaces, else the release namespace alone (the default: namespaced).
*/}}
{{- define "nextunicorn-compose.watchNamespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.watchNamespaces }}
{{- fail "watchNamespaces: must be empty when clusterWide is true (cluster-wide mode watches every namespace)" }}
{{- end }}
{{- toJson (list) }}
{{- else }}
{{- toJson (uniq (default (list .Release.Namespace) .Values.watchNamespaces)) }}
{{- end }}
{{- end }}

{{/*
Namespaces the inference ServiceAccount is created in.
*/}}
{{- define "nextunicorn-compose.inferenceNamespaces" -}}
{{- $ns := .Values.inference.serviceAccount.namespaces }}
{{- if not $ns }}
{{- $ns = include "nextunicorn-compose.watchNamespaces" . | fromJsonArray }}
{{- end }}
{{- if not $ns }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
The model profiles as a list, with the placement.* overrides applied.
*/}}
{{- define "nextunicorn-compose.profiles" -}}
{{- $p := .Values.placement }}
{{- if and (not .Values.profiles) (not $p.instanceTypes) (not $p.tolerations) (not $p.nodeSelector) (not $p.capacityType) }}
{{- /* The built-in profiles as they are, comments (licences) included. */}}
{{- .Files.Get "files/profiles.yaml" }}
{{- else }}
{{- $profiles := .Values.profiles }}
{{- if not $profiles }}
{{- $doc := .Files.Get "files/profiles.yaml" | fromYaml }}
{{- $profiles = default (list) $doc.profiles }}
{{- end }}
{{- $out := list }}
{{- range $profiles }}
{{- $profile := deepCopy . }}
{{- $placement := deepCopy (default (dict) $profile.placement) }}
{{- with $p.instanceTypes }}{{ $_ := set $placement "instanceTypes" . }}{{ end }}
{{- with $p.tolerations }}{{ $_ := set $placement "tolerations" . }}{{ end }}
{{- with $p.nodeSelector }}{{ $_ := set $placement "nodeSelector" (merge (deepCopy .) (default (dict) $placement.nodeSelector)) }}{{ end }}
{{- if $p.capacityType }}{{ $_ := set $placement "capacityType" $p.capacityType }}{{ end }}
{{- $_ := set $profile "placement" $placement }}
{{- $out = append $out $profile }}
{{- end }}
{{- toYaml (dict "profiles" $out) }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress rules: DNS, and the Kubernetes API server.
*/}}
{{- define "nextunicorn-compose.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{- define "nextunicorn-compose.apiServerEgress" -}}
{{- if not .Values.networkPolicy.apiServerCidrs }}
{{- fail "networkPolicy.apiServerCidrs: required while networkPolicy.enabled is true: the CIDRs the Kubernetes API server is reached at (EKS: the VPC CIDR of the control-plane ENIs, e.g. 192.168.0.0/16); 0.0.0.0/0 is refused. Or set networkPolicy.enabled=false." }}
{{- end }}
{{- range .Values.networkPolicy.apiServerCidrs }}
{{- if eq . "0.0.0.0/0" "::/0" }}
{{- fail (printf "networkPolicy.apiServerCidrs: %q opens egress to every address; give the API server's CIDRs" .) }}
{{- end }}
{{- end }}
- to:
    {{- range .Values.networkPolicy.apiServerCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: 443
      protocol: TCP
    - port: 6443
      protocol: TCP
{{- end }}

{{- define "nextunicorn-compose.gatewayJobsNamespace" -}}
{{- default .Release.Namespace .Values.gateway.jobsNamespace }}
{{- end }}

{{/*
The pool workers' ServiceAccount, and the namespaces it (with its Role and RoleBinding) is created
in: pools.serviceAccount.namespaces, else the inference ServiceAccount's, plus every namespace of
pools.list.
*/}}
{{- define "nextunicorn-compose.workerServiceAccountName" -}}
{{- default (printf "%s-worker" (include "nextunicorn-compose.fullname" .)) .Values.pools.serviceAccount.name }}
{{- end }}

{{- define "nextunicorn-compose.workerNamespaces" -}}
{{- $ns := .Values.pools.serviceAccount.namespaces }}
{{- if not $ns }}
{{- $ns = include "nextunicorn-compose.inferenceNamespaces" . | fromJsonArray }}
{{- end }}
{{- range .Values.pools.list }}
{{- $ns = append $ns (default $.Release.Namespace .namespace) }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
The defaults of a CompositionPool spec, read from the CRD the chart ships (generated from
compose_api.pools), as JSON: {"minReplicas": 0, ...}.
*/}}
{{- define "nextunicorn-compose.poolSpecDefaults" -}}
{{- $crd := .Files.Get "crds/compositionpools.compose.nextunicorn.dev.yaml" | fromYaml }}
{{- $out := dict }}
{{- range $version := $crd.spec.versions }}
{{- range $name, $field := $version.schema.openAPIV3Schema.properties.spec.properties }}
{{- if hasKey $field "default" }}
{{- $_ := set $out $name $field.default }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
COMPOSE_DEFAULT_POOLS from pools.defaultPools: "profile=pool,..." in the profiles' order.
*/}}
{{- define "nextunicorn-compose.defaultPools" -}}
{{- $pairs := list }}
{{- range $profile, $pool := .Values.pools.defaultPools }}
{{- $pairs = append $pairs (printf "%s=%s" $profile $pool) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
The OpenTelemetry settings of one component (dict "ctx" . "service" "compose-operator"): the
standard OTEL_* variables, empty while tracing.otlpEndpoint is.
*/}}
{{- define "nextunicorn-compose.tracingEnv" -}}
{{- $t := .ctx.Values.tracing }}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- with $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $t.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress to the collector: the port of tracing.otlpEndpoint (80 or 443 when it names
none), to tracing.collectorNamespaces when given; empty while tracing is off.
*/}}
{{- define "nextunicorn-compose.tracingEgress" -}}
{{- $t := .Values.tracing }}
{{- if $t.otlpEndpoint }}
{{- $url := urlParse $t.otlpEndpoint }}
{{- $port := ternary "443" "80" (eq $url.scheme "https") }}
{{- $parts := splitList ":" $url.host }}
{{- if gt (len $parts) 1 }}
{{- $port = last $parts }}
{{- end }}
- ports:
    - port: {{ $port | int }}
      protocol: TCP
  {{- with $t.collectorNamespaces }}
  to:
    {{- range . }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}
