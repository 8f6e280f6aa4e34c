"""Mozilla's server-side TLS profile as sslyze ships it, and an independent reading of an sslyze JSON result
against it: the list of every rule broken, empty when the server complies."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from tests.harness import ROOT

TOOLS = ROOT / ".venv" / "tools"
SSLYZE = TOOLS / "bin" / "sslyze"
# sslyze names curves by SECG, Mozilla's profile by ANSI X9.62 for two of them
_CURVE_NAMES = {"prime256v1": "secp256r1", "prime192v1": "secp192r1"}
_VERSIONS = {"ssl_2_0_cipher_suites": "SSLv2", "ssl_3_0_cipher_suites": "SSLv3", "tls_1_0_cipher_suites": "TLSv1",
             "tls_1_1_cipher_suites": "TLSv1.1", "tls_1_2_cipher_suites": "TLSv1.2",
             "tls_1_3_cipher_suites": "TLSv1.3"}
# weak whatever a profile says: no forward secrecy (plain RSA key exchange), CBC, RC4, (3)DES, NULL, anonymous,
# export, MD5 or SHA-1 MACs
WEAK_SUITE = re.compile(r"_CBC_|RC4|DES|NULL|_anon_|EXPORT|MD5|_SHA$|^TLS_RSA_|^TLS_PSK_|^TLS_SRP_")


def mozilla_profile(name: str = "intermediate") -> dict[str, Any]:
    """The newest Mozilla profile bundled with the installed sslyze."""
    files = sorted(TOOLS.glob("lib/python*/site-packages/sslyze/mozilla_tls_profile/*.json"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.stem)])
    assert files, f"no Mozilla profile under {TOOLS}; run `make tools`"
    return dict(json.loads(files[-1].read_text())["configurations"][name])


def accepted(scan: dict[str, Any], field: str) -> list[dict[str, Any]]:
    result = scan[field]["result"]
    return list(result["accepted_cipher_suites"]) if result and result["is_tls_version_supported"] else []


def violations(server: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """Every rule of ``profile`` that one server's sslyze result breaks, in words."""
    if server["scan_status"] != "COMPLETED":
        return [f"scan not completed: {server['scan_status']} {server.get('connectivity_error_trace')}"]
    scan = server["scan_result"]
    broken = [f"{name}: scan command {attempt['status']}" for name, attempt in scan.items()
              if attempt["status"] not in ("COMPLETED", "NOT_SCHEDULED")]
    if broken:
        return broken
    allowed_curves = {_CURVE_NAMES.get(c, c) for c in profile["tls_curves"]}
    problems: list[str] = []
    for field, version in _VERSIONS.items():
        suites = accepted(scan, field)
        if scan[field]["result"]["is_tls_version_supported"] and version not in profile["tls_versions"]:
            problems.append(f"{version} is accepted")
        allowed = set(profile["ciphersuites"] if version == "TLSv1.3" else profile["ciphers"]["iana"])
        for suite in suites:
            name = suite["cipher_suite"]["name"]
            if name not in allowed:
                problems.append(f"{version} suite {name} is accepted")
            if version != "TLSv1.3" and WEAK_SUITE.search(name):
                problems.append(f"{version} weak suite {name} is accepted")
            key = suite.get("ephemeral_key") or {}
            if key.get("type_name") == "ECDH":
                # OpenSSL reports X25519 as 253 bits; sslyze's checker adds 3, so do we
                size = key["size"] + (3 if key.get("curve_name") == "X25519" else 0)
                if size < profile["ecdh_param_size"]:
                    problems.append(f"{version} {name}: ECDH key of {size} bits")
                if key.get("curve_name") not in allowed_curves:
                    problems.append(f"{version} {name}: key exchange on {key.get('curve_name')}")
            elif key.get("type_name") == "DH" and key["size"] < (profile["dh_param_size"] or 0):
                problems.append(f"{version} {name}: DH group of {key['size']} bits")
    curves = {c["name"] for c in scan["elliptic_curves"]["result"]["supported_curves"] or []}
    problems += [f"curve {c} is accepted" for c in sorted(curves - allowed_curves)]
    problems += _certificate_problems(scan["certificate_info"]["result"], profile)
    checks = [
        (scan["tls_compression"]["result"]["supports_compression"], "TLS compression is on"),
        (scan["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"], "CCS injection"),
        (not scan["tls_fallback_scsv"]["result"]["supports_fallback_scsv"], "no TLS_FALLBACK_SCSV"),
        (scan["heartbleed"]["result"]["is_vulnerable_to_heartbleed"], "Heartbleed"),
        (scan["robot"]["result"]["robot_result"].startswith("VULNERABLE"), "ROBOT"),
        (not scan["session_renegotiation"]["result"]["supports_secure_renegotiation"], "insecure renegotiation"),
        (scan["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"],
         "client-initiated renegotiation"),
        (not scan["tls_extended_master_secret"]["result"]["supports_ems_extension"], "no extended master secret"),
    ]
    problems += [what for bad, what in checks if bad]
    return problems


def _certificate_problems(info: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    problems = []
    curves = {_CURVE_NAMES.get(c, c) for c in profile["certificate_curves"]}
    for deployment in info["certificate_deployments"]:
        leaf = deployment["received_certificate_chain"][0]
        if not deployment["verified_certificate_chain"]:
            problems.append("the certificate chain does not validate (against --certinfo_ca_file)")
        key = leaf["public_key"]
        if key["algorithm"] == "ECPublicKey":
            if key["ec_curve_name"] not in curves:
                problems.append(f"certificate key on {key['ec_curve_name']}")
        elif key["algorithm"] == "RSAPublicKey":
            if key["key_size"] < (profile["rsa_key_size"] or 0):
                problems.append(f"RSA certificate key of {key['key_size']} bits")
        else:
            problems.append(f"certificate key type {key['algorithm']}")
        if leaf["signature_algorithm_oid"]["name"] not in profile["certificate_signatures"]:
            problems.append(f"certificate signature {leaf['signature_algorithm_oid']['name']}")
        start, end = (dt.datetime.fromisoformat(leaf[k].replace("Z", "+00:00"))
                      for k in ("not_valid_before", "not_valid_after"))
        if (end - start).days > profile["maximum_certificate_lifespan"]:
            problems.append(f"certificate lifespan of {(end - start).days} days")
    return problems
