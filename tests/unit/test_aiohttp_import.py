"""``sidecar run`` imports aiohttp with empty default client contexts (``sidecar.aiohttp_import``): the system
CA bundle is not loaded into them, the environment is as it was afterwards, and contexts made later still see
the system store. Each case runs in a fresh interpreter, since this one has imported aiohttp already."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys

import pytest

from tests.harness import ROOT

_PROBE = r"""
import json, os, ssl, sys
names = ("SSL_CERT_FILE", "SSL_CERT_DIR")
before = {name: os.environ.get(name) for name in names}
if sys.argv[1] == "lean":
    from sidecar.aiohttp_import import import_aiohttp_without_system_cas
    import_aiohttp_without_system_cas()
import aiohttp.connector as connector
print(json.dumps({
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"],
    "later": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "env_kept": before == {name: os.environ.get(name) for name in names},
}))
"""


def probe(mode: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=str(ROOT), env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout))


def system_cas() -> int:
    return int(ssl.create_default_context().cert_store_stats()["x509_ca"])


@pytest.mark.parametrize("preset", [True, False], ids=["SSL_CERT_FILE set", "SSL_CERT_FILE unset"])
def test_aiohttp_defaults_hold_no_ca_and_the_environment_is_restored(preset: bool) -> None:
    if system_cas() == 0:
        pytest.skip("no system CA store here: nothing to leave out")
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if preset:
        paths = ssl.get_default_verify_paths()
        env.update({"SSL_CERT_FILE": str(paths.cafile or paths.openssl_cafile),
                    "SSL_CERT_DIR": str(paths.capath or paths.openssl_capath)})
    plain = probe("plain", env)
    assert plain["verified"] and plain["unverified"], plain     # what aiohttp loads when imported as is
    lean = probe("lean", env)
    assert lean["verified"] == lean["unverified"] == 0, lean
    assert lean["env_kept"] is True
    assert lean["later"] == plain["later"] and lean["later"], lean   # contexts made afterwards: the system store
