"""The reports of a run (harness.pytest_plugin.reporting and harness.results): JUnit titles and
properties (validated against junit-10.xsd), JSON results, KTAP, reproducers and summary.html,
on a throw-away pytest run (pytester, no VM)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.assets.kernel import Kernel
from harness.guest_handle import Guest
from harness.pytest_plugin import reporting, watch
from harness.results import junit, reproducer

pytest_plugins = ["pytester"]

# A conftest that does what the health monitor and the VM fixtures do, without a VM: the
# monitor files a kernel report as a finding of the call phase, and the run-wide properties
# are set.
FAKE_CONFTEST = '''
import pytest
from harness.findings import Category, Finding
from harness.pytest_plugin.watch import FINDINGS

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    if item.get_closest_marker("kernel_warning"):
        item.stash.setdefault(FINDINGS, {}).setdefault("call", []).append(Finding(
            Category.WARNING, "WARNING in ksm_scan_thread",
            "WARNING: CPU: 0 PID: 31 at mm/ksm.c:2500 ksm_scan_thread+0x1/0x2\\nCall Trace: ...",
            "ksm_scan_thread", (10, 14)))

@pytest.fixture
def guestish(request, tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[    0.000000] Linux version 6.1.0-test\\n")
    cmd = tmp_path / "qemu-cmdline.txt"
    cmd.write_text("qemu-system-x86_64 -accel tcg -m 2048\\n")
    for k, v in (("kernel", "/k/bzImage"), ("kernel_release", "6.1.0-test"),
                 ("kernel_config_hash", "abc123"), ("accelerator", "tcg"),
                 ("topology", "2 node(s) [1024M:1,1024M:1] 2 cpu(s)"),
                 ("console_log", str(log)), ("qemu_cmdline", str(cmd)), ("seed", "42")):
        request.node.user_properties.append((k, v))
'''

FAKE_TESTS = '''
import pytest

def test_ok(guestish):
    pass

@pytest.mark.kernel_warning
def test_warns(guestish):
    pass

def test_counter(guestish):
    shared = 3
    assert shared == 0, f"pages_shared {shared} != 0 after unmerge"

def test_skip():
    pytest.skip("no zram in this kernel")
'''


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path) -> tuple[pytest.RunResult, Path]:
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(test_fake=FAKE_TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    kernel_warning: fake\n")
    out = tmp_path / "out"
    res = pytester.runpytest("-p", "harness.pytest_plugin.plugin", "--junitxml", str(out / "junit.xml"),
                             "--results-json", str(out / "results.json"),
                             "--ktap", str(out / "results.ktap"),
                             "--markdown", str(out / "summary.md"),
                             "--report-dir", str(out / "report"))
    return res, out


def test_results_json(run: tuple[pytest.RunResult, Path]) -> None:
    res, out = run
    res.assert_outcomes(passed=1, failed=2, skipped=1)
    doc = json.loads((out / "results.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert doc["summary"] == {"passed": 1, "failed": 2, "skipped": 1}
    assert tests["test_warns"]["title"] == "WARNING in ksm_scan_thread"
    assert tests["test_warns"]["kernel_report"] == "WARNING in ksm_scan_thread"
    assert tests["test_warns"]["category"] == "WARNING"
    assert tests["test_warns"]["findings"][0]["frame"] == "ksm_scan_thread"
    assert tests["test_counter"]["title"].startswith("pages_shared 3 != 0 after unmerge")
    assert tests["test_counter"]["category"] == "ASSERTION"
    assert tests["test_skip"]["reason"] == "no zram in this kernel"
    assert tests["test_ok"]["properties"]["kernel_release"] == "6.1.0-test"
    assert tests["test_ok"]["properties"]["seed"] == "42"


def test_junit_titles_and_properties(run: tuple[pytest.RunResult, Path]) -> None:
    _, out = run
    root = ET.parse(out / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["kernel_release"] == "6.1.0-test"
    assert props["accelerator"] == "tcg"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["test_warns"].find("properties") is None  # not allowed by junit-10.xsd
    failure = cases["test_warns"].find("failure")
    assert failure is not None and failure.get("message") == "WARNING in ksm_scan_thread"
    assert "mm/ksm.c:2500" in (failure.text or "")
    counter = cases["test_counter"].find("failure")
    assert counter is not None
    msg = counter.get("message", "")
    assert msg.startswith("pages_shared 3 != 0 after unmerge")
    assert "\n" not in msg
    sysout = cases["test_warns"].findtext("system-out") or ""
    assert "seed: 42" in sysout and "[[ATTACHMENT|" in sysout


@pytest.mark.skipif(not shutil.which("xmllint"), reason="xmllint (libxml2-utils) not installed")
def test_junit_validates_against_jenkins_xsd(run: tuple[pytest.RunResult, Path]) -> None:
    _, out = run
    assert junit.validate(out / "junit.xml") == []


@pytest.mark.skipif(not shutil.which("xmllint"), reason="xmllint (libxml2-utils) not installed")
def test_plain_pytest_junit_with_properties_does_not_validate(tmp_path: Path) -> None:
    # why we write our own: pytest's per-test-case <properties> break junit-10.xsd
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="s" tests="1" failures="0" errors="0">'
                   '<testcase name="t"><properties><property name="a" value="b"/></properties>'
                   '</testcase></testsuite></testsuites>')
    assert junit.validate(bad)


def test_ktap(run: tuple[pytest.RunResult, Path]) -> None:
    _, out = run
    text = (out / "results.ktap").read_text().splitlines()
    assert text[:2] == ["KTAP version 1", "1..4"]
    assert "# WARNING in ksm_scan_thread" in text
    assert any(line.startswith("not ok 2 test_fake.py::test_warns") for line in text)
    assert any(line.endswith("# SKIP no zram in this kernel") for line in text)


def test_markdown_summary(run: tuple[pytest.RunResult, Path]) -> None:
    _, out = run
    text = (out / "summary.md").read_text()
    assert "**2 failed, 1 passed, 1 skipped**" in text
    assert ("| <code>test_fake.py::test_warns</code> | failed | WARNING in ksm_scan_thread | "
            "ksm_scan_thread |") in text
    assert "(skipped): no zram in this kernel" in text


def test_reproducer_and_summary(run: tuple[pytest.RunResult, Path]) -> None:
    _, out = run
    rdir = out / "report"
    script = rdir / "failures" / "test_fake.py_test_warns" / "reproducer.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "--ksm-seed 42" in text and "test_fake.py::test_warns" in text
    assert "qemu-system-x86_64 -accel tcg" in text
    assert (script.parent / "console.log").read_text().startswith("[    0.000000] Linux")
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    html = (rdir / "summary.html").read_text()
    assert "WARNING in ksm_scan_thread" in html and "reproducer" in html
    assert not (rdir / "failures" / "test_fake.py_test_ok").exists()


def test_rerun_argv_keeps_kernel_topology_seed() -> None:
    argv = reproducer.rerun_argv("tests/ksm/test_merge.py::test_a[x]",
                             {"kernel": "/k/bzImage", "numa": "512M:1,1536M:1",
                              "accel": "auto", "append": ""}, "7")
    assert argv == ["./ksm-harness", "run", "tests/ksm/test_merge.py::test_a[x]",
                    "--kernel", "/k/bzImage", "--numa", "512M:1,1536M:1", "--ksm-seed", "7"]


def test_title_of() -> None:
    assert watch.title_of("AssertionError: pages_shared 3 != 0\nassert 3 == 0") == \
        "pages_shared 3 != 0"
    assert watch.title_of("\nFailed: guest failed to boot: x\n") == "guest failed to boot: x"


def test_guest_properties_from_funcargs(tmp_path: Path) -> None:
    guest = Guest.__new__(Guest)
    kernel = Kernel(path=Path("/k/vmlinux"), boot_image=tmp_path / "vmlinux", release="6.1.0-9",
                    config={"CONFIG_KSM": "y"})
    spec = SimpleNamespace(kernel=kernel, accel=SimpleNamespace(name="tcg"),
                           topology=SimpleNamespace(describe=lambda: "2 node(s)"))
    # a stand-in VM with only what guest_properties reads
    fake_vm: Any = SimpleNamespace(spec=spec, console_log=tmp_path / "console.log", dir=tmp_path)
    guest._vm = fake_vm
    guest.retired = False
    guest.boot_seconds = 4.25  # booted for this test: reported once
    # a stand-in test item: guest_properties reads only its funcargs
    item: Any = SimpleNamespace(funcargs={"vm": guest, "ksm": object(), "ksm_seed": 5})
    props = dict(reporting.guest_properties(item))
    assert props["kernel_release"] == "6.1.0-9"
    assert props["kernel_config_hash"] == kernel.config_hash != "unknown"
    assert props["console_log"] == str(tmp_path / "console.log")
    assert props["accelerator"] == "tcg" and props["boot_seconds"] == "4.25"
    assert "boot_seconds" not in dict(reporting.guest_properties(item))


def test_ktap_timeout_and_error_directives() -> None:
    from harness.findings import Category, Finding
    from harness.results import ktap
    from harness.results.model import Outcome, Result
    results = [
        Result("t.py::hang", Outcome.FAILED,
               [Finding(Category.HANG, "guest hung: ssh command 'x' timed out after 60s")]),
        Result("t.py::boot", Outcome.ERROR,
               [Finding(Category.BOOT, "guest failed to boot: no marker # within 180s")]),
        Result("t.py::warn", Outcome.FAILED, [Finding(Category.WARNING, "WARNING in f")]),
        Result("t.py::hang_after_bug", Outcome.FAILED,
               [Finding(Category.BUG, "BUG: x"), Finding(Category.HANG, "guest hung")]),
    ]
    lines = ktap.render(results).splitlines()
    assert "not ok 1 t.py::hang # TIMEOUT guest hung: ssh command 'x' timed out after 60s" in lines
    assert "not ok 2 t.py::boot # ERROR guest failed to boot: no marker  within 180s" in lines
    assert "not ok 3 t.py::warn" in lines  # the kernel's failure: no directive
    assert "not ok 4 t.py::hang_after_bug" in lines  # the cause (the BUG) ranks first


def test_ktap_marks_an_expected_failure_xfail_not_skip() -> None:
    from harness.results import ktap
    from harness.results.model import Outcome, Result
    lines = ktap.render([Result("t.py::known", Outcome.XFAILED, reason="known kernel bug x"),
                         Result("t.py::skipped", Outcome.SKIPPED, reason="no zram")]
                        ).splitlines()
    assert "ok 1 t.py::known # XFAIL known kernel bug x" in lines
    assert "ok 2 t.py::skipped # SKIP no zram" in lines
