"""The health monitor end to end: real kernel reports, real hangs, in real guests, each
failing exactly the test that caused it; the run goes on with a fresh VM."""
from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.guest_handle import Guest
from harness.ksm import KSM_DIR, leaks
from tests.helpers import REPO


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    junit = tmp_path_factory.mktemp("monitor") / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-c", str(REPO / "tox.ini"), "--rootdir", str(REPO),
            "-p", "no:cacheprovider", "-q", "-s", f"--junitxml={junit}",
            # a case that outlives this dumps every thread's stack: a hang's evidence
            "-o", "faulthandler_timeout=240",
            str(REPO / "tests/guest/data/monitor_cases.py")]
    try:  # the cases take ~2 min here, ~2.2 min with both cores busy
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the monitor's cases did not finish in 900 s; their output:\n"
                    f"{_text(exc.stdout)[-6000:]}\n--- stderr (stacks dumped by faulthandler)"
                    f" ---\n{_text(exc.stderr)[-20000:]}")
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        TIMES[case.get("name", "")] = float(case.get("time", "0"))
        failure = case.find("failure")
        error = case.find("error")
        node = failure if failure is not None else error
        status = "passed" if node is None else node.tag
        result[case.get("name", "")] = (status, "" if node is None else
                                        (node.get("message", "") + "\n" + (node.text or "")))
    return result


TIMES: dict[str, float] = {}


def _text(data: bytes | str | None) -> str:
    """What a timed-out child printed (bytes on POSIX, even with text=True)."""
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


@pytest.fixture(scope="module")
def times(outcomes: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Each case's duration (seconds, from the JUnit file)."""
    return TIMES


def test_panic_fails_the_test_that_caused_it(outcomes: dict[str, tuple[str, str]]) -> None:
    status, text = outcomes["test_a_panics"]
    assert status == "failure"
    assert text.startswith("kernel panic: sysrq triggered crash"), text[:500]
    assert "sysrq_handle_crash" in text or "Kernel panic" in text


def test_next_test_passes_on_a_fresh_vm(outcomes: dict[str, tuple[str, str]]) -> None:
    assert outcomes["test_b_runs_on_a_fresh_vm"][0] == "passed", outcomes["test_b_runs_on_a_fresh_vm"]


def test_frozen_qemu_is_a_hang_with_evidence(outcomes: dict[str, tuple[str, str]]) -> None:
    status, text = outcomes["test_c_frozen_qemu"]
    assert status == "failure"
    # a stopped QEMU answers neither SSH nor QMP: what the harness can say of it is that it
    # is stopped, named first, then the command that waited for it
    assert re.match(r"guest hung: QEMU \d+ is stopped \(SIGSTOP or a debugger: state T\): "
                    r"guest command still running after 10s: true", text), text[:500]
    assert "console tail" in text


def test_d_state_task_is_reported_by_the_kernel(outcomes: dict[str, tuple[str, str]]) -> None:
    status, text = outcomes["test_d_d_state_hang"]
    assert status == "failure"
    # The kernel's own hung-task report (the case sets hung_task_timeout to 10 s) ends the
    # 50 s wait as soon as it is printed, and is the title; the other tasks' stacks follow
    # (a hung-task report shows only the waiter), from sysrq w through QMP.
    first = text.split("\n", 1)[0]
    assert first.startswith("INFO: task"), text[:500]
    assert "state:D" in text, text[:3000]
    assert "Show Blocked State" in text, text[:3000]


def test_run_goes_on_after_hangs(outcomes: dict[str, tuple[str, str]]) -> None:
    assert outcomes["test_e_after_hangs"][0] == "passed", outcomes["test_e_after_hangs"]


def test_oom_is_its_own_category(outcomes: dict[str, tuple[str, str]]) -> None:
    assert outcomes["test_f_allowed_oom"][0] == "passed", outcomes["test_f_allowed_oom"]
    status, text = outcomes["test_g_oom_not_allowed"]
    assert status == "failure" and "OOM" in text, text[:500]


def test_warning_in_a_fixtures_setup_fails_the_test(outcomes: dict[str, tuple[str, str]]) -> None:
    status, text = outcomes["test_h_warning_in_fixture_setup"]
    assert status == "error", (status, text[:500])  # an error in set-up, not a pass
    assert text.startswith("WARNING in cmp_and_merge_page"), text[:500]


def test_kernel_report_then_hang_is_titled_by_the_report(outcomes: dict[str, tuple[str, str]]
                                                         ) -> None:
    status, text = outcomes["test_i_warning_then_hang"]
    assert status == "failure"
    assert text.startswith("WARNING in cmp_and_merge_page"), text[:500]  # the cause first ...
    assert "--- what followed ---" in text and "guest hung" in text, text[:3000]  # ... the hang


def test_fatal_report_ends_the_wait(outcomes: dict[str, tuple[str, str]], times: dict[str, float]
                                    ) -> None:
    status, text = outcomes["test_j_bug_ends_the_wait"]
    assert status == "failure"
    assert text.startswith("kernel BUG"), text[:500]
    # the verdict came from the report, not from the 150 s deadline of the wait (the time
    # includes booting the replacement VM)
    assert times["test_j_bug_ends_the_wait"] < 60, times


def test_leak_check_names_the_counter(vm: Guest) -> None:
    # Real merged pages left in place: the idle check must name the counter and values.
    vm.run(f"echo 0 > {KSM_DIR}/sleep_millisecs; echo 5000 > {KSM_DIR}/pages_to_scan;"
           f" echo 1 > {KSM_DIR}/run", check=True)
    proc = vm.spawn("python3 -c \"import mmap,sys; m=mmap.mmap(-1, 64<<12, flags=mmap.MAP_PRIVATE|"
                    "mmap.MAP_ANONYMOUS); m.write(b'x'*(64<<12)); m.madvise(mmap.MADV_MERGEABLE); "
                    "print('ready', flush=True); sys.stdin.read()\"")
    assert proc.read_line(60) == "ready"
    deadline_cmd = (f"for i in $(seq 600); do [ $(cat {KSM_DIR}/pages_sharing) -ge 63 ] "
                    "&& exit 0; sleep 0.1; done; exit 1")
    assert vm.run(deadline_cmd, timeout=90).ok, leaks.ksm_counters(vm)
    problems = leaks.ksm_idle_problems(leaks.ksm_counters(vm))
    assert "pages_shared 1 != 0 after unmerge" in problems
    assert "pages_sharing 63 != 0 after unmerge" in problems
    proc.kill()
    leaks.check_ksm_idle(vm)  # and after run=2 with the process gone, all clean
