{{/* The sidecar container. role: "native" (an init container with restartPolicy Always: the kubelet starts
the app once its startupProbe on /ready passes and stops it after the app has exited), "legacy" (a regular
container placed first: its postStart holds the app's start until /ready, its preStop drains and outlives the
app), or "node" (mode daemonset: no app next to it).
  include "sidecar.container" (dict "root" . "role" "native") */}}
{{- define "sidecar.container" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $adminPort := include "sidecar.port" $values.config.admin.listen -}}
{{- $tokenFile := "" -}}
{{- if $values.adminToken.existingSecret }}{{ $tokenFile = "/etc/sidecar/admin/token" }}{{ end -}}
- name: sidecar
  image: {{ include "sidecar.image" $root | quote }}
  imagePullPolicy: {{ $values.image.pullPolicy }}
  {{- if eq .role "native" }}
  restartPolicy: Always
  {{- end }}
  args: [run, -c, /etc/sidecar/sidecar.yaml]
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    {{- with $values.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: admin
      containerPort: {{ $adminPort }}
      protocol: TCP
    - name: inbound
      containerPort: {{ include "sidecar.port" $values.config.inbound.listen }}
      protocol: TCP
    - name: gossip-tcp
      containerPort: {{ include "sidecar.port" $values.config.gossip.listen }}
      protocol: TCP
    - name: gossip-udp
      containerPort: {{ include "sidecar.port" $values.config.gossip.listen }}
      protocol: UDP
    {{- if and (eq .role "node") $values.sidecar.hostPorts }}
    - name: api
      containerPort: {{ include "sidecar.port" $values.config.api.listen }}
      hostPort: {{ include "sidecar.port" $values.config.api.listen }}
      protocol: TCP
    - name: outbound
      containerPort: {{ include "sidecar.port" $values.config.outbound.listen }}
      hostPort: {{ include "sidecar.port" $values.config.outbound.listen }}
      protocol: TCP
    - name: dns
      containerPort: {{ include "sidecar.port" $values.config.dns.listen }}
      hostPort: {{ include "sidecar.port" $values.config.dns.listen }}
      protocol: UDP
    {{- end }}
  {{- if eq .role "native" }}
  # the kubelet starts the app only once this passes: /ready answers 200 when every listener is up and gossip
  # has joined, so the app's first outbound call finds a working mesh
  startupProbe:
    httpGet: {path: /ready, port: admin}
    periodSeconds: 1
    failureThreshold: {{ $values.sidecar.startupSeconds }}
  {{- else }}
  # /healthz answers as soon as the process serves; /ready once every listener is up and gossip joined
  startupProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 1
    failureThreshold: 30
  {{- end }}
  readinessProbe:
    httpGet: {path: /ready, port: admin}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  {{- if ne .role "native" }}
  lifecycle:
    {{- if eq .role "legacy" }}
    # the kubelet starts the next container (the app) only once this returns: the app starts with the
    # mesh ready
    postStart:
      exec:
        command: [sidecar, wait-ready, --admin, "http://127.0.0.1:{{ $adminPort }}", --timeout, "{{ $values.sidecar.startupSeconds }}"]
    {{- end }}
    preStop:
      # drain: refuse new inbound work and tell peers, then wait for them and for the endpoints to notice;
      # SIGTERM follows and the sidecar leaves the mesh
      exec:
        command:
          - python
          - -c
          - |
            import os, time, urllib.request
            token = {{ $tokenFile | quote }}
            headers = {"Authorization": "Bearer " + open(token).read().strip()} if token and os.path.exists(token) else {}
            request = urllib.request.Request("http://127.0.0.1:{{ $adminPort }}/drain", method="POST", headers=headers)
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except Exception as error:
                print("drain:", error)
            time.sleep({{ $values.sidecar.drainSleepSeconds }})
  {{- end }}
  securityContext:
    {{- toYaml $values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $values.sidecar.resources | nindent 4 }}
  volumeMounts:
    - name: etc-sidecar
      mountPath: /etc/sidecar
      readOnly: true
    - name: data
      mountPath: {{ $values.config.node.data_dir | default "/var/lib/sidecar" }}
    - name: tmp
      mountPath: /tmp
{{- end -}}
