"""Who may use the admin port: a pure rule, request facts in, a refusal or None out.

Theory of operation
-------------------
*Probes are open.* ``/ready``, ``/healthz`` and ``/metrics`` answer any read without credentials, token or not:
the kubelet's probes and Prometheus reach them as they reach Envoy's ``/ready`` and ``/stats/prometheus`` or
Consul's ``/v1/agent/metrics``. They show whether the process serves and counters, never a message, an address
of a request or a credential.

*With ``admin.token_file``* every other request needs ``Authorization: Bearer TOKEN`` with the file's content,
compared in constant time; anything else is 401 UNAUTHENTICATED, from any address. That covers the mutations
and every read that shows traffic or messages (``/deadletters`` holds message bodies and the URLs of failed
requests, ``/debug/failures`` and ``/debug/explain`` the requests themselves, ``/v1/metrics*``, ``/clusters``,
``/tls``, ``/dashboard/*``) and the views of the mesh and of this process (``/config``, ``/members``,
``/catalog``, ``/keys``...): the list is what is *not* guarded, so a route a part adds later is guarded without
having to opt in, and a caller without the token learns nothing about which routes exist.

*Without it* reads are open (the port listens on loopback by default, as Envoy's admin port and Consul without
ACLs do), and a mutation (any method but GET, HEAD, OPTIONS) is accepted only from this host: from a loopback
peer (the chart's preStop hook, ``sidecar`` commands, an operator's curl on the node), and refused with 403
PERMISSION_DENIED naming the fix otherwise. Two kinds of loopback connection are not the operator:

* a web page in the operator's browser (a cross-site form POST, a DNS-rebinding page): browsers mark those
  requests with an ``Origin`` header, which curl, the CLI and probes never send, so a mutation carrying one is
  refused;
* a peer's request relayed by this sidecar's own inbound listener, which reaches its local apps from loopback:
  the inbound always sets ``x-sidecar-caller`` on what it relays (and drops any the caller sent), so a mutation
  carrying it is refused. (A service may not be registered at one of the sidecar's own listeners either:
  ``sidecar.catalog.own``.)

*Whatever the token*, a request that came in over loopback must name the host as ``localhost`` or an IP
address: a DNS-rebinding page in a browser on this host would otherwise read every open route as its own
origin (``sidecar.access.rebinding_refusal``).

A token is not replayable by a page (it cannot set ``Authorization`` on a cross-site request without a CORS
preflight we never answer). The given token and the expected one are never logged or echoed; refusals say only
what was missing.
"""

from __future__ import annotations

from sidecar.access import bearer_refusal, is_loopback, rebinding_refusal
from sidecar.errors import PermissionDenied, SidecarError

# methods that change nothing (RFC 9110 "safe methods", TRACE aside: no route answers it)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# reads answered without the token: liveness, readiness and Prometheus's scrape
PROBE_PATHS = frozenset({"/ready", "/healthz", "/metrics"})
# set by the inbound listener on every request it relays to a local app (sidecar.mesh.inbound_routes.CALLER_HEADER)
RELAYED_HEADER = "x-sidecar-caller"


def check_request(method: str, token: str | None, authorization: str | None, peer: str | None,
                  origin: str | None, *, path: str = "/", relayed: bool = False, host: str | None = None,
                  local_address: str | None = None) -> SidecarError | None:
    """The refusal for one admin request, or None when it may proceed.

    ``token`` is admin.token_file's content (None: no token configured); ``authorization``, ``origin`` and
    ``host`` are the request's headers (None when absent); ``peer`` is the client's IP address as the socket
    reports it, ``local_address`` the address it connected to; ``relayed``: the request carries the inbound
    listener's ``x-sidecar-caller``.
    """
    rebound = rebinding_refusal(host, local_address, "admin port")
    if rebound is not None:
        return rebound
    read = method.upper() in SAFE_METHODS
    if read and path in PROBE_PATHS:
        return None
    if token is not None:
        return bearer_refusal(token, authorization, "admin.token_file")
    if read:
        return None
    if not is_loopback(peer):
        return PermissionDenied("without admin.token_file, the admin port accepts changes from this host's"
                                " loopback only; set admin.token_file to allow them from elsewhere",
                                {"peer": peer or "unknown"})
    if origin is not None:
        return PermissionDenied("without admin.token_file, the admin port refuses changes from web pages"
                                " (the request has an Origin header); use curl or the sidecar command,"
                                " or set admin.token_file")
    if relayed:
        return PermissionDenied("without admin.token_file, the admin port refuses changes relayed from a peer"
                                f" sidecar (the request has {RELAYED_HEADER}); set admin.token_file to allow"
                                " them with the token")
    return None


def exposure_warning(listen_host: str, token: str | None) -> str | None:
    """What to tell the operator at start when the admin port listens beyond loopback, or None."""
    if token is not None or is_loopback(listen_host) or listen_host == "localhost":
        return None
    return (f"the admin port listens on {listen_host} without admin.token_file: reads are open to the network;"
            " changes are accepted from loopback only")


__all__ = ["PROBE_PATHS", "RELAYED_HEADER", "SAFE_METHODS", "check_request", "exposure_warning", "is_loopback"]
