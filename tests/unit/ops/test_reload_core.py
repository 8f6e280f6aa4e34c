"""The reload's pure parts: the version history, the canary's verdict, the ``?canary=`` parameter."""

from __future__ import annotations

import pytest

from sidecar.config.diff import Plan, diff
from sidecar.config.load import config_from_raw
from sidecar.config.model import Config
from sidecar.errors import InvalidArgument
from sidecar.ops.reload import parse_canary
from sidecar.ops.reload_canary import MIN_REQUESTS, CanaryVerdict, Counts, check_interval, judge
from sidecar.ops.reload_history import CanaryState, History

# ------------------------------------------------------------------------------------------ history


def test_versions_are_numbered_kept_newest_first_and_bounded() -> None:
    history = History(3)
    base = Config()
    debug = config_from_raw({"logging": {"level": "debug"}})
    history.record("start", base, (), 1000)
    for i in range(4):
        changes = diff(base, debug) if i % 2 == 0 else diff(debug, base)
        history.record("reload", debug if i % 2 == 0 else base, changes, 2000 + i, ("logging",))
    assert history.numbers() == [3, 4, 5] and len(history) == 3
    assert history.get(1) is None and history.get(4) is not None
    shown = history.to_json()
    assert shown["current"] == 5 and [v["version"] for v in shown["versions"]] == [5, 4, 3]
    assert shown["versions"][0]["current"] and not shown["versions"][1]["current"]
    assert shown["versions"][0]["changes"][0]["text"] == 'logging.level: "debug" -> "info"'
    assert shown["versions"][0]["applied"] == ["logging"]
    history.resize(1)
    assert history.numbers() == [5]
    assert history.record("rollback", base, (), 3000, restores=4).number == 6   # numbers never repeat


def test_history_refuses_unknown_sources_and_sizes() -> None:
    with pytest.raises(ValueError):
        History(0)
    with pytest.raises(ValueError):
        History(2).record("manual", Config(), (), 0)


def test_a_canary_state_shows_rates() -> None:
    history = History(5)
    version = history.record("reload", Config(), (), 0)
    version.canary = CanaryState(30.0, 0.05, (200, 2), observed=(50, 40), state="rolled-back", reason="why")
    shown = history.to_json()["versions"][0]["canary"]
    assert shown["window"] == "30s" and shown["state"] == "rolled-back"
    assert shown["baseline"] == {"requests": 200, "errors": 2, "errorRate": 0.01}
    assert shown["observed"]["errorRate"] == 0.8


# ------------------------------------------------------------------------------------------ canary


@pytest.mark.parametrize(("baseline", "observed", "verdict"), [
    (Counts(0, 0), Counts(MIN_REQUESTS - 1, MIN_REQUESTS - 1), CanaryVerdict.UNDECIDED),   # too few to judge
    (Counts(0, 0), Counts(100, 0), CanaryVerdict.HEALTHY),
    (Counts(0, 0), Counts(100, 5), CanaryVerdict.HEALTHY),          # exactly at the threshold: not past it
    (Counts(0, 0), Counts(100, 6), CanaryVerdict.ROLL_BACK),
    (Counts(100, 10), Counts(100, 15), CanaryVerdict.HEALTHY),      # 0.10 before, 0.15 after: at before + 0.05
    (Counts(100, 10), Counts(100, 16), CanaryVerdict.ROLL_BACK),
    (Counts(100, 50), Counts(40, 20), CanaryVerdict.HEALTHY),       # already bad before: not the reload's doing
    (Counts(0, 0), Counts(MIN_REQUESTS, MIN_REQUESTS), CanaryVerdict.ROLL_BACK),
])
def test_the_verdict_compares_after_with_before_plus_the_threshold(baseline: Counts, observed: Counts,
                                                                   verdict: CanaryVerdict) -> None:
    found, why = judge(baseline, observed, 0.05)
    assert found is verdict, why
    assert why


def test_counts_subtract_without_going_negative() -> None:
    assert Counts(10, 3) - Counts(4, 1) == Counts(6, 2)
    assert Counts(1, 0) - Counts(5, 5) == Counts(0, 0)
    assert Counts(0, 0).ratio == 0.0 and Counts(4, 1).ratio == 0.25


@pytest.mark.parametrize(("window", "interval"), [(0.5, 0.1), (5.0, 0.5), (30.0, 1.0), (600.0, 1.0)])
def test_the_window_is_checked_ten_times_within_bounds(window: float, interval: float) -> None:
    assert check_interval(window) == interval


@pytest.mark.parametrize(("text", "seconds"), [(None, None), ("off", 0.0), ("0", 0.0), ("30s", 30.0),
                                               ("2m", 120.0), ("1.5", 1.5)])
def test_the_canary_parameter(text: str | None, seconds: float | None) -> None:
    assert parse_canary(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5s", "0s"])
def test_a_bad_canary_parameter_is_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidArgument, match="canary must be"):
        parse_canary(text)


def test_a_plan_from_history_configs_applies_the_same_parts_back() -> None:
    old = config_from_raw({"authorization": {"default": "deny"}})
    forward = Plan(diff(Config(), old))
    back = Plan(diff(old, Config()))
    assert forward.parts == back.parts == ("authorization",)
