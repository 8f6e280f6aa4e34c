"""Who may use the app API: a pure rule, request facts in, a refusal or None out.

Theory of operation
-------------------
The app API listens on loopback and has no credentials of its own by default: any process on the host may call
it, as Dapr's and Consul's local agents allow. What must not call it is a web page in a browser on the host,
which can reach loopback too:

* *DNS rebinding*: a page on ``evil.example`` makes its name resolve to 127.0.0.1 and then reads the API as its
  own origin. The browser still sends ``Host: evil.example``, so only requests whose ``Host`` is this listener's
  own address (the local address the connection came in on), ``localhost`` or a loopback IP literal are served,
  with any port (a forwarded port keeps working); anything else is 403 PERMISSION_DENIED.
* *Cross-site requests*: a page may POST a ``text/plain`` body (no CORS preflight) to 127.0.0.1 and publish or
  register what it likes. Browsers send ``Origin`` on such requests and ``Sec-Fetch-Site: cross-site`` on every
  cross-site request; curl, the SDK and apps send neither. A request is refused (403) when its ``Origin`` is not
  the API's own origin, or when ``Sec-Fetch-Site`` is ``cross-site``.

With ``api.token_file`` (Dapr's ``DAPR_API_TOKEN``) every request also needs ``Authorization: Bearer TOKEN``
(401 UNAUTHENTICATED otherwise), compared in constant time; the token keeps out other users of the host too.
The token is never logged or echoed.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from sidecar.access import bearer_refusal, host_of, is_loopback
from sidecar.errors import PermissionDenied, SidecarError


def is_own_host(host: str, local_address: str | None) -> bool:
    """Whether a Host names this listener: ``localhost``, a loopback IP literal, or the connection's local
    address (what an app on another interface dialled when the listener binds all of them)."""
    if host == "localhost" or is_loopback(host):
        return True
    if local_address is None:
        return False
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(local_address.split("%", 1)[0])
    except ValueError:
        return False


def check_api_request(host: str | None, origin: str | None, fetch_site: str | None, authorization: str | None,
                      token: str | None, local_address: str | None) -> SidecarError | None:
    """The refusal for one app API request, or None when it may proceed.

    ``host``, ``origin``, ``fetch_site`` (``Sec-Fetch-Site``) and ``authorization`` are the request's headers
    (None when absent); ``token`` is api.token_file's content (None: not set); ``local_address`` is the IP
    address the connection was accepted on.
    """
    name = host_of(host) if host else None
    if name is None or not is_own_host(name, local_address):
        return PermissionDenied("the app API serves requests for localhost or its own address only (Host "
                                f"{(host or '')[:100]!r}); a page that rebinds a DNS name to this host is refused",
                                {"host": (host or "")[:100]})
    if origin is not None and not _same_origin(origin, host or ""):
        return PermissionDenied("the app API refuses requests from web pages (the request has Origin "
                                f"{origin[:100]!r}); apps and curl send none", {"origin": origin[:100]})
    if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
        return PermissionDenied("the app API refuses cross-site requests from web pages (Sec-Fetch-Site: "
                                "cross-site); apps and curl send none")
    if token is not None:
        return bearer_refusal(token, authorization, "api.token_file")
    return None


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` is ``http://HOST`` with the request's own Host (the API serves no pages, so any other
    origin is a page elsewhere)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme == "http" and bool(parts.netloc) and parts.netloc.lower() == host.strip().lower() \
        and not parts.path.strip("/")


__all__ = ["check_api_request", "is_own_host"]
