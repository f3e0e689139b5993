"""harness.ksm.control without a guest: the pure helpers, and the Ksm class against a fake KSM
directory (plain files in a temp dir) through the host's /bin/sh, the same dash as the guest's.
The host's real /sys/kernel/mm/ksm is never touched."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from harness import ksm
from harness.access.remote import CommandResult, CommandTimeout
from harness.ksm import (
    ExpectedCounts,
    Ksm,
    KsmError,
    KsmNoProgress,
    KsmSnapshot,
    KsmUnavailable,
    KsmUnmergeIncomplete,
    KsmWriteError,
)

pytestmark = pytest.mark.host

# /sys/kernel/mm/ksm of Debian's 6.1 kernel, freshly booted.
DEFAULTS_61 = {
    "full_scans": "0", "max_page_sharing": "256", "merge_across_nodes": "1",
    "pages_shared": "0", "pages_sharing": "0", "pages_to_scan": "100", "pages_unshared": "0",
    "pages_volatile": "0", "run": "0", "sleep_millisecs": "20", "stable_node_chains": "0",
    "stable_node_chains_prune_millisecs": "2000", "stable_node_dups": "0",
    "use_zero_pages": "0",
}
WRITABLE_61 = {"max_page_sharing", "merge_across_nodes", "pages_to_scan", "run",
               "sleep_millisecs", "stable_node_chains_prune_millisecs", "use_zero_pages"}

LS_61 = """total 0
-r--r--r-- 1 root root 4096 Jan  1 00:00 full_scans
-rw-r--r-- 1 root root 4096 Jan  1 00:00 max_page_sharing
-rw-r--r-- 1 root root 4096 Jan  1 00:00 merge_across_nodes
-r--r--r-- 1 root root 4096 Jan  1 00:00 pages_shared
-rw-r--r-- 1 root root 4096 Jan  1 00:00 run
"""


# ---- pure helpers ----

def test_measured_max_page_sharing_arithmetic() -> None:
    # measured-facts.md: 16384 identical pages at 256 -> 64 shared, 16320 sharing, 1 chain.
    assert ksm.expected_shared_sharing(16384, 256) == (64, 16320)
    assert ksm.expected_counts(16384, 256) == ExpectedCounts(64, 16320, 1, 64, 0)


@pytest.mark.parametrize("n,mps,want", [
    (0, 256, ExpectedCounts(0, 0, 0, 0, 0)),
    (1, 256, ExpectedCounts(0, 0, 0, 0, 1)),
    (2, 256, ExpectedCounts(1, 1, 0, 0, 0)),
    (256, 256, ExpectedCounts(1, 255, 0, 0, 0)),
    (257, 256, ExpectedCounts(1, 255, 0, 0, 1)),  # one page left with no partner
    (258, 256, ExpectedCounts(2, 256, 1, 2, 0)),  # a second dup turns the node into a chain
    (300, 256, ExpectedCounts(2, 298, 1, 2, 0)),
    (10, 2, ExpectedCounts(5, 5, 1, 5, 0)),
    (11, 2, ExpectedCounts(5, 5, 1, 5, 1)),
])
def test_expected_counts(n: int, mps: int, want: ExpectedCounts) -> None:
    got = ksm.expected_counts(n, mps)
    assert got == want
    assert got.pages_shared + got.pages_sharing + got.unmerged == n


def test_expected_counts_rejects_impossible_limit() -> None:
    with pytest.raises(ValueError):
        ksm.expected_counts(10, 1)


def test_expected_across_nodes() -> None:
    # measured: identical content on both nodes gives 1 KSM page with mac=1, 2 with mac=0.
    assert ksm.expected_across_nodes([100, 100], 256, merge_across_nodes=True) == (1, 199)
    assert ksm.expected_across_nodes([100, 100], 256, merge_across_nodes=False) == (2, 198)


def test_scan_deadline() -> None:
    assert ksm.scan_deadline(0, 100, 20) == ksm.DEADLINE_FLOOR
    assert ksm.scan_deadline(1000, 10000, 0) == ksm.DEADLINE_FLOOR  # small: the floor
    # 131072 pages at the defaults: 1311 batches x 20 ms + 13.1 s of work per scan, 3 scans, x3
    assert ksm.scan_deadline(131072, 100, 20) == pytest.approx(3 * 3 * (1311 * 0.02 + 13.1072))
    slow = ksm.scan_deadline(131072, 100, 20)
    assert slow > ksm.scan_deadline(131072, 10000, 0) > ksm.DEADLINE_FLOOR
    assert ksm.scan_deadline(131072, 100, 20, full_scans=4) > slow


def test_parse_snapshot_and_snapshot_access() -> None:
    text = ("full_scans:3\npages_shared:64\n/sys/kernel/mm/ksm/run:1\n"
            "advisor_mode:[none] scan-time\n")
    values = ksm.parse_snapshot(text)
    assert values == {"full_scans": "3", "pages_shared": "64", "run": "1",
                      "advisor_mode": "[none] scan-time"}
    snap = KsmSnapshot(values)
    assert snap["pages_shared"] == 64 and snap.get("pages_sharing") == 0
    assert "run" in snap and "pages_sharing" not in snap
    assert snap.counters() == {"full_scans": 3, "pages_shared": 64}
    assert snap.summary() == "run=1 full_scans=3 pages_shared=64"
    with pytest.raises(KsmError, match="not a number"):
        snap["advisor_mode"]
    with pytest.raises(KeyError):
        snap["ksm_zero_pages"]


def test_parse_ls() -> None:
    assert ksm.parse_ls(LS_61) == {"full_scans": False, "max_page_sharing": True,
                                   "merge_across_nodes": True, "pages_shared": False,
                                   "run": True}


def test_parse_process_stat() -> None:
    text = ("== ksm_stat\nksm_rmap_items 16384\nksm_zero_pages 3\nksm_merge_any: no\n"
            "ksm_mergeable: yes\nksm_process_profit 123\n== ksm_merging_pages\n16320\n")
    assert ksm.parse_process_stat(text) == {
        "ksm_rmap_items": 16384, "ksm_zero_pages": 3, "ksm_merge_any": 0, "ksm_mergeable": 1,
        "ksm_process_profit": 123, "ksm_merging_pages": 16320}
    assert ksm.parse_process_stat("") == {}


def test_errno_from_shell_messages() -> None:
    assert ksm.errno_from_text("sh: 1: echo: echo: Device or resource busy") == "EBUSY"
    assert ksm.errno_from_text("sh: 1: echo: echo: Invalid argument") == "EINVAL"
    assert ksm.errno_from_text("sh: 1: echo: echo: Cannot allocate memory") == "ENOMEM"
    assert ksm.errno_from_text("something else") == "?"


def test_selected_value() -> None:
    assert ksm.selected_value("[none] scan-time") == "none"
    assert ksm.selected_value("256\n") == "256"


# ---- Ksm against a fake directory ----

class LocalRunner:
    """harness.remote.Runner on the host's /bin/sh, recording every command."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, cmd: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        self.commands.append(cmd)
        t0 = time.monotonic()
        try:
            p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                               check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(cmd, timeout) from None
        return CommandResult(cmd, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def writes(self) -> list[str]:
        """Knob writes made by Ksm.set, as "value>name"."""
        return [c.split(" > ")[0].replace("/bin/echo ", "") + ">" + c.split(" > ")[1].split()[0]
                .rsplit("/", 1)[-1] for c in self.commands if c.startswith("/bin/echo ")]


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    d = tmp_path / "ksm"
    d.mkdir()
    for name, value in DEFAULTS_61.items():
        (d / name).write_text(value + "\n")
        (d / name).chmod(0o644 if name in WRITABLE_61 else 0o444)
    return d


@pytest.fixture
def runner() -> LocalRunner:
    return LocalRunner()


@pytest.fixture
def k(fake: Path, runner: LocalRunner) -> Ksm:
    return Ksm(runner, timeout=10, ksm_dir=str(fake))


def put(d: Path, **values: int) -> None:
    """Set files of the fake tree the way sysfs shows them: a reader sees the old value or
    the new one, never an empty file (FakeKsmd writes while the code under test reads)."""
    for name, value in values.items():
        path = d / name
        tmp = path.with_name(f".{name}.new")
        tmp.write_text(f"{value}\n")
        tmp.chmod(path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)


def test_detects_what_the_kernel_has(k: Ksm) -> None:
    files = k.files()
    assert set(files) == set(DEFAULTS_61)
    assert {n for n, w in files.items() if w} == WRITABLE_61
    assert not k.has("advisor_mode")
    with pytest.raises(KsmUnavailable, match="no .*/advisor_mode"):
        k.set("advisor_mode", "scan-time")
    assert set(k.knobs()) == WRITABLE_61


def test_no_ksm_is_a_clear_error(runner: LocalRunner, tmp_path: Path) -> None:
    with pytest.raises(KsmUnavailable, match="CONFIG_KSM"):
        Ksm(runner, ksm_dir=str(tmp_path / "absent")).snapshot()


def test_snapshot_reads_everything_in_one_command(k: Ksm, runner: LocalRunner,
                                                  fake: Path) -> None:
    k.files()
    runner.commands.clear()
    put(fake, pages_shared=5, full_scans=7)
    snap = k.snapshot()
    assert len(runner.commands) == 1
    assert snap["pages_shared"] == 5 and snap["full_scans"] == 7
    assert set(snap.values) == set(DEFAULTS_61)
    assert k.get("pages_shared") == 5


def test_set_reads_back_and_reports_errno(k: Ksm, fake: Path) -> None:
    k.set("pages_to_scan", 10000)
    assert (fake / "pages_to_scan").read_text() == "10000\n"
    with pytest.raises(KsmWriteError, match="read-only") as info:
        k.set("pages_shared", 1)
    assert info.value.errno_name == "EACCES"
    # A refused write: a directory stands in for a file the kernel refuses.
    (fake / "use_zero_pages").unlink()
    (fake / "use_zero_pages").mkdir()
    with pytest.raises(KsmWriteError) as info:
        k.set("use_zero_pages", 1)
    assert info.value.errno_name == "EISDIR" and info.value.name == "use_zero_pages"
    # A failed write, as the kernel's EBUSY would fail: /dev/full fails every write (ENOSPC).
    (fake / "stable_node_chains_prune_millisecs").unlink()
    (fake / "stable_node_chains_prune_millisecs").symlink_to("/dev/full")
    with pytest.raises(KsmWriteError, match="No space left on device") as info:
        k.set("stable_node_chains_prune_millisecs", 1000)
    assert info.value.errno_name == "ENOSPC"
    with pytest.raises(ValueError):
        k.set("run", "1; reboot")


def test_exact_counters_pause_and_restore_run(k: Ksm, fake: Path) -> None:
    put(fake, run=1, pages_sharing=9)
    snap = k.exact_counters()
    assert snap["run"] == 1 and snap["pages_sharing"] == 9
    assert (fake / "run").read_text() == "1\n"
    put(fake, run=0)
    assert k.exact_counters()["run"] == 0


def test_unmerge_all_checks_nothing_is_left(k: Ksm, fake: Path) -> None:
    assert k.unmerge_all()["run"] == 2
    put(fake, pages_shared=3)  # a kernel that leaves KSM pages after run=2
    with pytest.raises(KsmUnmergeIncomplete, match="pages_shared=3"):
        k.unmerge_all()


def test_restore_order(k: Ksm, runner: LocalRunner, fake: Path) -> None:
    defaults = k.defaults_capture()
    assert defaults["run"] == "0" and defaults["max_page_sharing"] == "256"
    k.set("sleep_millisecs", 0)
    k.set("max_page_sharing", 2)
    k.set("merge_across_nodes", 0)
    k.set("run", 1)
    runner.commands.clear()
    k.restore(defaults)
    writes = runner.writes()
    assert writes[0] == "2>run" and writes[-1] == "0>run"
    assert writes.index("1>merge_across_nodes") < writes.index("20>sleep_millisecs")
    assert writes.index("256>max_page_sharing") < writes.index("20>sleep_millisecs")
    assert "100>pages_to_scan" not in writes  # unchanged knobs are left alone
    assert k.defaults_capture() == defaults


def test_fast_scan_restores(k: Ksm, fake: Path) -> None:
    with k.fast_scan():
        assert k.get("pages_to_scan") == 10000 and k.get("sleep_millisecs") == 0
    assert k.get("pages_to_scan") == 100 and k.get("sleep_millisecs") == 20


class KsmdFactory(Protocol):
    """The ``ksmd`` fixture: a started FakeKsmd on the fake sysfs directory."""

    def __call__(self, period: float, at: int = 1, sharing: int = 100) -> FakeKsmd: ...


class FakeKsmd:
    """Bumps full_scans every ``period`` seconds; merges ``sharing`` pages at scan ``at``."""

    def __init__(self, d: Path, period: float, at: int = 1, sharing: int = 100) -> None:
        self.d, self.period, self.at, self.sharing = d, period, at, sharing
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        scans = 0
        while not self.stop.wait(self.period):
            scans += 1
            if scans >= self.at:
                put(self.d, pages_shared=1, pages_sharing=self.sharing)
            put(self.d, full_scans=scans)


@pytest.fixture
def ksmd(fake: Path) -> Iterator[KsmdFactory]:
    started: list[FakeKsmd] = []

    def make(period: float, at: int = 1, sharing: int = 100) -> FakeKsmd:
        f = FakeKsmd(fake, period, at, sharing)
        f.thread.start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop.set()
        f.thread.join()


def test_wait_merged_needs_scans_and_the_predicate(k: Ksm, fake: Path, ksmd: KsmdFactory) -> None:
    put(fake, run=1, pages_sharing=100, pages_shared=1)  # already true, but not yet scanned
    ksmd(0.1)
    t0 = time.monotonic()
    snap = k.wait_merged(lambda s: s["pages_sharing"] == 100, min_full_scans=3, timeout=10)
    assert snap["full_scans"] >= 3 and time.monotonic() - t0 >= 0.25


def test_wait_merged_exact(k: Ksm, fake: Path, ksmd: KsmdFactory) -> None:
    put(fake, run=1)
    ksmd(0.05, at=2, sharing=255)
    snap = k.wait_merged(lambda s: s["pages_sharing"] == 255, timeout=10, exact=True)
    assert snap["pages_sharing"] == 255 and snap["run"] == 1


def test_wait_merged_reports_no_progress(k: Ksm, fake: Path) -> None:
    put(fake, run=1, full_scans=4)
    with pytest.raises(KsmNoProgress, match="ksmd made no progress .*full_scans stayed at 4") \
            as info:
        k.wait_merged(lambda s: True, timeout=0.5)
    assert "before: run=1 full_scans=4" in str(info.value)
    assert info.value.after["full_scans"] == 4


def test_wait_merged_reports_the_wrong_state(k: Ksm, fake: Path, ksmd: KsmdFactory) -> None:
    put(fake, run=1)
    ksmd(0.05, at=1, sharing=10)
    with pytest.raises(KsmNoProgress, match=r"did not reach the expected state "
                       r"\(pages_sharing=20\).*after: .*pages_sharing=10"):
        k.wait_merged(lambda s: s["pages_sharing"] == 20, timeout=3.0,
                      expect="pages_sharing=20")


def test_wait_merged_refuses_when_ksmd_is_off(k: Ksm) -> None:
    with pytest.raises(KsmError, match="run=0"):
        k.wait_merged(lambda s: True)


def test_default_deadline_follows_the_scan_rate(k: Ksm, fake: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    put(fake, run=1)
    seen: list[tuple[int, int, int, int]] = []

    def spy(pages: int, pts: int, sleep: int, scans: int = 2, **kw: object) -> float:
        seen.append((pages, pts, sleep, scans))
        return 0.2

    monkeypatch.setattr("harness.ksm.control.scan_deadline", spy)
    with pytest.raises(KsmNoProgress):
        k.wait_merged(lambda s: True, pages=5000)
    put(fake, pages_unshared=70, pages_volatile=30)
    with pytest.raises(KsmNoProgress):
        k.wait_merged(lambda s: True, min_full_scans=1)
    assert seen == [(5000, 100, 20, 2), (100, 100, 20, 1)]


def test_process_stat_of_a_host_process(k: Ksm) -> None:
    stats = k.process_stat(1)  # whatever this kernel offers, parsed without error
    assert all(isinstance(v, int) for v in stats.values())
    with pytest.raises(KsmError, match="no process"):
        k.process_stat(2**22 + 7)


def test_a_wait_allows_for_smart_scans_skips_only_when_it_is_on() -> None:
    from harness.ksm.control import SMART_SCAN_SKIPS, scans_to_allow
    assert scans_to_allow(KsmSnapshot({"run": "1"}), 2) == 2                    # 6.1: no knob
    assert scans_to_allow(KsmSnapshot({"smart_scan": "0"}), 2) == 2
    assert scans_to_allow(KsmSnapshot({"smart_scan": "1"}), 2) == 2 + 2 * SMART_SCAN_SKIPS
