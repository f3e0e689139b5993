"""Host faults (full disk, truncated kernel, oversized topology, ...) end in one clear line
and a non-zero exit, never a traceback; secret files are 0600 and run directories 0700."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from harness import cli, paths
from harness import spec as spec_mod


def _one_line(err: str, startswith: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(startswith), err


def test_full_disk_while_preparing_a_run(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    target = tmp_path / "runs" / "boot-1" / "initrd.img"

    def full(*_a: object, **_k: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(spec_mod, "build", lambda _opts: None)
    monkeypatch.setattr(paths, "new_run_dir", full)
    assert cli.main(["boot", "--", "true"]) == 2
    _one_line(capsys.readouterr().err, f"ksm-harness: no space left on device writing {target}")


def test_runs_directory_that_cannot_be_made(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KSM_HARNESS_RUNS", str(blocker / "runs"))
    monkeypatch.setattr(spec_mod, "build", lambda _opts: None)
    assert cli.main(["boot", "--", "true"]) == 2
    err = capsys.readouterr().err
    _one_line(err, "ksm-harness: not a directory writing ")
    assert str(blocker / "runs") in err
