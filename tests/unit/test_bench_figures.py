"""bench/figures.py: every bench's figures land first in its own section of bench/FIGURES.md,
with the date, machine, accelerator, kernel and command."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench"


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("figures", BENCH / "figures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures = _figures()


def test_new_entry_goes_first_in_its_section() -> None:
    text = figures.HEADER + "\n## boot\n\n### old\n\nold figures\n\n## suite\n\n### s\n"
    new = figures.entry(["median 1.00 s"], kernel="6.1.192", accel="tcg", command="bench/x",
                        when="2026-12-04 21:00 UTC", at="abc123")
    out = figures.insert(text, "boot", new)
    boot = out.split("## boot\n", 1)[1].split("## suite", 1)[0]
    assert boot.index("### 2026-12-04 21:00 UTC, abc123") < boot.index("### old")
    assert "- kernel: 6.1.192" in boot and "accelerator: tcg" in boot
    assert "median 1.00 s" in boot and "CPUs" in boot
    assert out.count("## suite") == 1 and "### s" in out


def test_a_new_bench_gets_its_section_at_the_end() -> None:
    out = figures.insert("", "verdict_latency", "### e\n")
    assert out.startswith("# Measured figures") and out.rstrip().endswith("### e")
    assert out.count("## verdict_latency") == 1


def test_record_writes_where_told_and_off_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "FIGURES.md"
    monkeypatch.setenv("KSM_BENCH_FIGURES", str(target))
    monkeypatch.setattr(sys, "argv", ["bench/boot.py", "--boots", "3"])
    assert figures.record("boot", ["one"], kernel="k", accel="a") == target
    assert "`bench/boot.py --boots 3`" in target.read_text()
    monkeypatch.setenv("KSM_BENCH_FIGURES", "off")
    assert figures.record("boot", ["two"], kernel="k", accel="a") is None
    assert "two" not in target.read_text()


def test_every_bench_that_records_has_a_section() -> None:
    committed = (BENCH / "FIGURES.md").read_text()
    benches = {m for path in BENCH.glob("*.py")
               for m in re.findall(r'record\("(\w+)"', path.read_text())}
    assert benches >= {"boot", "suite", "false_alarms", "verdict_latency"}
    for bench in benches:
        assert f"\n## {bench}\n" in committed, bench
