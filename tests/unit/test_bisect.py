"""The bisect decision (good 0 / bad 1 / skip 125) on recorded results, and the kernel build's
config check; no kernel tree, no VM."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets import kbuild as build
from harness.results.model import Result, load_results
from harness.runs import bisect as b
from tests.helpers import require_tool

DATA = Path(__file__).parent / "data" / "results"


def results(*names: str) -> list[list[Result]]:
    return [load_results(DATA / f"{n}.json")[1] for n in names]


BAD_SIG = b.Signature("WARNING", "WARNING in cmp_and_merge_page")


def test_signature_of_a_kernel_warning() -> None:
    (r, _), = [results("bad_warning")[0]]
    assert b.signatures(r)[0] == BAD_SIG


def test_recording_the_bad_end_takes_its_failure() -> None:
    v = b.decide(results("bad_warning"), None)
    assert v.status == b.BAD and v.signature == BAD_SIG
    assert "mm/ksm.c:2291" in v.evidence[0]


@pytest.mark.parametrize("runs, status", [
    (["good"], b.GOOD),
    (["good", "good", "good"], b.GOOD),
    (["bad_warning"], b.BAD),
    (["bad_warning_other_pid"], b.BAD),             # PIDs and offsets are not the signature
    (["good", "bad_warning"], b.BAD),               # one bad run of N is enough
    (["unrelated_warning"], b.SKIP),                # another WARNING: not this bug
    (["good", "unrelated_warning"], b.SKIP),        # masked: cannot tell
    (["lost_vm"], b.SKIP),
    (["boot_failed"], b.SKIP),
    (["hung"], b.SKIP),
    (["skipped"], b.SKIP),
    (["counter_mismatch"], b.SKIP),
    (["empty"], b.ABORT),                           # -k selected nothing: stop the bisection
])
def test_decide_against_a_warning(runs: list[str], status: int) -> None:
    assert b.decide(results(*runs), BAD_SIG).status == status


def test_counter_failures_match_on_their_message_not_their_numbers() -> None:
    sig = b.decide(results("counter_mismatch"), None).signature
    assert sig == b.Signature("ASSERTION", "pages_shared N != N after unmerge")
    assert b.decide(results("counter_mismatch_other_count"), sig).status == b.BAD
    assert b.decide(results("bad_warning"), sig).status == b.SKIP
    assert b.decide(results("good"), sig).status == b.GOOD


def test_a_hang_signature_ignores_its_cause() -> None:
    sig = b.decide(results("hung"), None).signature
    assert sig == b.Signature("HANG", "guest hung")


def test_infrastructure_never_records_as_bad() -> None:
    for name in ("lost_vm", "boot_failed"):
        v = b.decide(results(name), None)
        assert v.status == b.SKIP, name


def test_signature_file_round_trip(tmp_path: Path) -> None:
    BAD_SIG.save(tmp_path / "sig.json")
    assert b.Signature.load(tmp_path / "sig.json") == BAD_SIG
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(b.BisectError):
        b.Signature.load(tmp_path / "junk.json")


def test_first_bad_commit_from_git_output() -> None:
    out = ("running 'ksm-harness' 'bisect-step'\n"
           "3f1c0de2b7a94c1e8a0d5f2c9b1e7a6d4c3b2a10 is the first bad commit\n"
           "commit 3f1c0de2b7a94c1e8a0d5f2c9b1e7a6d4c3b2a10\n")
    assert b.first_bad_commit(out) == "3f1c0de2b7a94c1e8a0d5f2c9b1e7a6d4c3b2a10"
    assert b.first_bad_commit("There are only 'skip'ped commits left to test.") is None


def test_step_with_a_failed_build_skips(tmp_path: Path) -> None:
    require_tool("git")
    def broken(*a: object, **k: object) -> None:
        raise build.BuildError("build failed (exit 2)")
    v = b.step(tmp_path, "merge", bad=BAD_SIG, report_dir=tmp_path, build_fn=broken,
               log=lambda m: None)
    assert v.status == b.SKIP and "build failed" in v.reason


def test_step_stops_at_the_first_matching_run(tmp_path: Path) -> None:
    require_tool("git")
    seen: list[Path] = []

    def run(tree: Path, scenario: str, out: Path) -> list[Result]:
        seen.append(out)
        return results("bad_warning")[0]
    v = b.step(tmp_path, "merge", runs=5, bad=BAD_SIG, report_dir=tmp_path,
               build_fn=lambda *a, **k: None, run_fn=run, log=lambda m: None)
    assert v.status == b.BAD and len(seen) == 1
    assert (tmp_path / "bisect" / "unknown" / "verdict.json").is_file()


def test_bisect_refuses_a_non_git_tree(tmp_path: Path) -> None:
    require_tool("git")
    with pytest.raises(b.BisectError, match="not a git work tree"):
        b.bisect(tmp_path, "v1", "v2", "merge", report_dir=tmp_path)


# --- the config fragment check (kunit.py style) -------------------------------------------

def test_fragment_parse_and_missing_options() -> None:
    wanted = build.parse_fragment("# comment\nCONFIG_KSM=y\nCONFIG_NUMA=y\n"
                                  "# CONFIG_PANIC_ON_OOPS is not set\nCONFIG_CMDLINE=\"x y\"\n")
    assert wanted == {"CONFIG_KSM": "y", "CONFIG_NUMA": "y", "CONFIG_PANIC_ON_OOPS": None,
                      "CONFIG_CMDLINE": "x y"}
    have = {"CONFIG_KSM": "y", "CONFIG_NUMA": "m", "CONFIG_PANIC_ON_OOPS": "y",
            "CONFIG_CMDLINE": "x y"}
    assert build.missing_options(wanted, have) == [
        "CONFIG_NUMA=y (have m)", "CONFIG_PANIC_ON_OOPS is not set (have CONFIG_PANIC_ON_OOPS=y)"]


def test_our_fragment_names_what_the_issue_asks_for() -> None:
    wanted = build.parse_fragment(build.FRAGMENT.read_text())
    for opt in ("KSM", "NUMA", "NUMA_EMU", "MIGRATION", "PVH", "VIRTIO_PCI", "VIRTIO_BLK",
                "VIRTIO_NET", "EXT4_FS", "ZRAM", "ZSMALLOC", "SWAP", "MEMCG",
                "TRANSPARENT_HUGEPAGE", "MAGIC_SYSRQ", "DETECT_HUNG_TASK",
                "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "DEVTMPFS", "CGROUPS"):
        assert wanted.get(f"CONFIG_{opt}") == "y", opt


def test_build_refuses_a_non_tree(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="not a kernel source tree"):
        build.build(tmp_path)


def test_configure_names_options_that_did_not_land(tmp_path: Path) -> None:
    # a fake tree whose olddefconfig drops an option (as Kconfig does for a missing dependency)
    (tmp_path / "Kconfig").write_text("")
    (tmp_path / "Makefile").write_text(
        "defconfig:\n\tprintf 'CONFIG_KSM=y\\n' > .config\n"
        "olddefconfig:\n\tgrep -v NUMA_EMU .config > .c; mv .c .config\n")
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KSM=y\nCONFIG_NUMA_EMU=y\n")
    require_tool("make")
    with pytest.raises(build.ConfigError, match=r"CONFIG_NUMA_EMU=y \(have not set\)"):
        build.configure(tmp_path, frag, log=lambda m: None)


def test_configure_keeps_the_trees_config_unless_defconfig(tmp_path: Path) -> None:
    """A bisect step must build with the config of the first build (the developer's), not a
    fresh defconfig; --defconfig replaces it; --slim merges the slim fragment too."""
    require_tool("make")
    (tmp_path / "Kconfig").write_text("")
    (tmp_path / "Makefile").write_text(
        "defconfig:\n\tprintf 'CONFIG_FROM_DEFCONFIG=y\\n' > .config\nolddefconfig:\n")
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KSM=y\n")
    (tmp_path / ".config").write_text("CONFIG_MINE=y\n")
    config = build.configure(tmp_path, frag, log=lambda m: None)
    assert config.get("CONFIG_MINE") == "y" and "CONFIG_FROM_DEFCONFIG" not in config
    config = build.configure(tmp_path, frag, log=lambda m: None, defconfig=True, slim=True)
    assert config.get("CONFIG_FROM_DEFCONFIG") == "y" and "CONFIG_MINE" not in config
    assert config.get("CONFIG_KSM") == "y"
    assert "CONFIG_DRM" not in config or config["CONFIG_DRM"] == "n"
    assert "# CONFIG_SOUND is not set" in (tmp_path / ".config").read_text()


def test_slim_fragment_never_turns_off_what_the_suite_needs() -> None:
    slim = build.parse_fragment(build.SLIM.read_text())
    wanted = build.parse_fragment(build.FRAGMENT.read_text())
    assert slim and all(v is None for v in slim.values())
    assert not set(slim) & set(wanted)


def test_git_missing_is_one_line_not_a_traceback(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no git on it
    with pytest.raises(b.BisectError, match="git is not installed"):
        b._git(tmp_path, "rev-parse", "HEAD")
