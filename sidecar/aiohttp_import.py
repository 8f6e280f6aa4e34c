"""aiohttp imported for ``sidecar run`` without the system CA store.

Importing ``aiohttp.connector`` (which ``import aiohttp`` does) builds its two default client ``SSLContext``
objects, the ones it uses for an ``https://`` URL given no ``ssl=``, and OpenSSL loads the system CA bundle into
each: 144 certificates on Debian, about 1.9 MiB resident for the life of the process. A running sidecar never
lets aiohttp pick a context: health checks and messaging's calls to its own outbound listener and local apps
are plain HTTP (``check.http`` is a path or an ``http://`` URL), and messaging's calls to peer sidecars pass
the mesh's own mTLS context. So ``sidecar run`` imports aiohttp first, with OpenSSL's CA locations
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``) pointed at nothing for the duration of the import: the defaults then
hold no CA, and an ``https://`` request left to them would fail verification rather than trust the system
store. The environment is restored at once, so everything made later (the OTLP exporter's context for an
``https`` collector) sees the system store as usual. Other commands and library users import aiohttp as is.
"""

from __future__ import annotations

import os
import ssl
import sys


def import_aiohttp_without_system_cas() -> None:
    """Import aiohttp with empty default client contexts (see the module's doc); nothing if already imported."""
    if "aiohttp.connector" in sys.modules:
        return
    paths = ssl.get_default_verify_paths()
    names = (paths.openssl_cafile_env, paths.openssl_capath_env)
    saved = {name: os.environ.get(name) for name in names}
    os.environ[paths.openssl_cafile_env] = os.devnull      # a file of no certificates
    os.environ[paths.openssl_capath_env] = os.devnull      # not a directory: no certificates looked up there
    try:
        import aiohttp.connector  # noqa: F401  # the import is the point: its defaults are built now
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
