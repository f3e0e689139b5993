"""The records of an interrupted run: the test the signal stopped is an error saying so in
every report (JUnit error, KTAP "not ok ... # ERROR"), a test that never started a skip saying
so, a finished one or a failure already recorded unchanged."""
from __future__ import annotations

from harness.pytest_plugin.reporting import mark_interrupted
from harness.results import junit, ktap
from harness.results.model import Outcome, Result

IDS = ["t.py::test_done", "t.py::test_stopped", "t.py::test_failed", "t.py::test_later"]


def _records() -> dict[str, Result]:
    done = Result(IDS[0], durations={"setup": 1.0, "call": 1.0, "teardown": 0.1})
    stopped = Result(IDS[1], durations={"setup": 1.0})
    failed = Result(IDS[2], outcome=Outcome.FAILED, durations={"setup": 1.0, "call": 2.0})
    return {r.nodeid: r for r in (done, stopped, failed)}


def test_the_interrupted_test_is_an_error_in_every_report() -> None:
    results = _records()
    mark_interrupted(results, IDS, "SIGTERM")
    stopped = results[IDS[1]]
    assert stopped.outcome is Outcome.ERROR and stopped.when == "call"
    assert stopped.title == "interrupted (SIGTERM) during call"
    assert results[IDS[0]].outcome is Outcome.PASSED
    assert results[IDS[2]].outcome is Outcome.FAILED  # its own verdict stands
    later = results[IDS[3]]
    assert later.outcome is Outcome.SKIPPED and "interrupted (SIGTERM)" in later.reason
    records = [results[i] for i in IDS]
    xml = junit.to_string([junit.Suite("ksm-harness", records)])
    assert '<error message="interrupted (SIGTERM) during call"' in xml
    lines = ktap.render(records).splitlines()
    assert "not ok 2 t.py::test_stopped # ERROR interrupted (SIGTERM) during call" in lines, lines
    assert any(ln.startswith("ok 4 t.py::test_later # SKIP") for ln in lines), lines
    assert results[IDS[2]].title == ""  # no interrupt finding on a recorded failure
