"""``/debug/explain`` and ``sidecar explain`` against real ``sidecar run`` processes: three nodes joined by gossip,
two instances of echo (one whose app is down, so the caller ejects it), an authorization rule that refuses a
path, and failed requests looked up by their x-request-id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import FakeApp, SidecarProcess, http, make_certs, run_cli, wait_for

AUTHORIZATION = {"default": "allow",
                 "rules": [{"to": "echo", "from": ["client"], "paths": ["/admin/*"], "action": "deny"},
                           {"to": "echo", "from": ["*"]}]}
# round robin: EWMA would steer away from b2 after its first failure and might never send it the second
POLICY = {"*": {"retries": {"attempts": 0}, "load_balancer": "round_robin",
                "outlier_detection": {"consecutive_failures": 2, "max_ejection_percent": 50,
                                      "base_ejection_time": "60s"}}}


def step(explanation: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in explanation["steps"] if s["step"] == name)
    return found


def test_explain_names_the_ejected_instance_the_refusing_rule_and_each_try(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["client", "echo"])
    with FakeApp("echo-1") as app1, FakeApp("echo-2") as app2:
        common = {"authorization": AUTHORIZATION, "policies": POLICY}
        b1: SidecarProcess = start_sidecar({**common, "node": {"name": "b1", "cluster": "t"}, "tls": certs["echo"],
                                            "services": [{"name": "echo", "port": app1.port}]}, name="b1")
        join = {"join": [b1.listeners["gossip"]], "profile": "local"}
        b2: SidecarProcess = start_sidecar({**common, "node": {"name": "b2", "cluster": "t"}, "tls": certs["echo"],
                                            "services": [{"name": "echo", "port": app2.port}], "gossip": join},
                                           name="b2")
        a: SidecarProcess = start_sidecar({**common, "node": {"name": "a", "cluster": "t"}, "tls": certs["client"],
                                           "gossip": join}, name="a")
        wait_for(lambda: len(http("GET", a.admin + "/catalog").json().get("echo", [])) == 2, 20,
                 what="two echo instances in a's catalog")
        outbound = f"http://{a.listeners['outbound']}"
        dead = f"echo:b2:{app2.port}"

        before = http("GET", a.admin + "/debug/explain?service=echo&path=/work").json()
        assert before["verdict"] == "ok", before
        assert step(before, "ejection")["says"] == "no request has gone to echo yet: no instance is ejected"

        app2.server.shutdown()
        app2.server.server_close()     # b2's app is gone: b2 answers 503 for it, a counts gateway errors
        failed_ids = []
        for n in range(40):
            request_id = f"fail-{n}"
            reply = http("GET", outbound + "/work", headers={"Host": "echo", "x-request-id": request_id})
            if reply.status != 200:
                failed_ids.append(request_id)
            endpoints = http("GET", a.admin + "/clusters").json()["echo"]["endpoints"]
            if any(e["instance"] == dead and e["ejected"] for e in endpoints):
                break
        else:
            raise AssertionError("b2's instance was never ejected")
        assert len(failed_ids) == 2   # consecutive_failures: 2, round robin, no retries

        explained = http("GET", a.admin + "/debug/explain?service=echo&path=/work&method=GET").json()
        ejection = step(explained, "ejection")
        assert ejection["verdict"] == "warn"
        assert dead in ejection["says"] and "is ejected until" in ejection["says"], ejection["says"]
        [row] = [r for r in ejection["data"]["endpoints"] if r["instance"] == dead]
        assert row["ejected"] and row["times"] == 1 and row["remainingS"] > 30
        balancer = step(explained, "balancer")
        assert balancer["data"]["pick"]["instance"] == f"echo:b1:{app1.port}"
        assert [c["instance"] for c in balancer["data"]["candidates"]] == [f"echo:b1:{app1.port}"]
        assert step(explained, "authorization")["data"]["rule"] == "authorization.rules[1]"
        identity = step(explained, "identity")
        assert identity["data"]["spiffeId"] == "spiffe://mesh.local/service/client"
        assert 0 < identity["data"]["expiresInS"] <= 3600

        # the failed request: one try, to b2's instance, which answered 503
        tried = http("GET", a.admin + f"/debug/explain?request_id={failed_ids[0]}").json()
        assert tried["status"] == 503 and tried["service"] == "echo"
        [only] = tried["tries"]
        assert only["instance"] == dead and only["outcome"] == "response" and only["status"] == 503
        assert any("answered 503" in line for line in tried["says"])

        # the rule that refuses a caller: named before the request is sent, and on the refused request
        refused = http("GET", a.admin + "/debug/explain?service=echo&path=/admin/users&method=DELETE").json()
        assert refused["verdict"] == "refuse"
        authz = step(refused, "authorization")
        assert authz["verdict"] == "refuse" and authz["data"]["rule"] == "authorization.rules[0]"
        assert "deny rule authorization.rules[0]" in refused["summary"]
        reply = http("DELETE", outbound + "/admin/users", headers={"Host": "echo", "x-request-id": "denied-1"})
        assert reply.status == 403, reply
        denied = http("GET", a.admin + "/debug/explain?request_id=denied-1").json()
        assert denied["status"] == 403 and denied["tries"][0]["status"] == 403
        # another caller is allowed by the catch-all rule
        other = http("GET", a.admin + "/debug/explain?service=echo&path=/admin/users&caller=ops").json()
        assert step(other, "authorization")["data"]["rule"] == "authorization.rules[1]"

        listing = http("GET", a.admin + "/debug/failures").json()
        assert listing["failures"][0]["requestId"] == "denied-1"
        missing = http("GET", a.admin + "/debug/explain?request_id=never-seen")
        assert missing.status == 404

        text = run_cli("explain", "--service", "echo", "--path", "/admin/users", "--method", "DELETE",
                       "--admin", a.admin)
        assert text.returncode == 0, text.stderr
        assert "authorization.rules[0]" in text.stdout and "[NO  ] authorization" in text.stdout
        assert f"{dead} at" in text.stdout and "is ejected until" in text.stdout
        tries = run_cli("explain", "--request-id", failed_ids[1], "--admin", a.admin)
        assert tries.returncode == 0 and "try 1 → " in tries.stdout and "answered 503" in tries.stdout
        usage = run_cli("explain", "--admin", a.admin)
        assert usage.returncode == 2 and "--service" in usage.stderr
        for process in (a, b2, b1):
            assert process.terminate() == 0
