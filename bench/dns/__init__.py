"""DNS benchmark: dnsperf against the sidecar's responder and against dnsmasq serving the same names."""
