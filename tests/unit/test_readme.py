"""The README stays a user's guide that is true of the code: at most 300 lines, exactly the two
set-up commands (.ci/run calls the selftest one), and every option it shows exists in the
parser of the verb it is shown with (read from each verb's --help, run with its own cache)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness import cli
from harness.kernel_bugs import KNOWN_BUGS, parse_version
from tests.helpers import REPO, harness_cmd

README = REPO / "README.md"
MAX_LINES = 300
SETUP = ["./ksm-harness run --junitxml results/junit.xml", "./ksm-harness selftest"]
# verbs whose options the README may show, and the --help that lists them
# every verb's --help (from the CLI's own table, so a new verb is read too); export's options
# are its kcidb subcommand's; selftest's are pytest's
VERBS = {verb: [verb] for verb in cli.VERBS if verb != "selftest"} | {"export": ["export", "kcidb"]}
# options in the README that are not ours on purpose: the bad-option example, pip's own
NOT_OURS = {"--bogus", "--user"}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _help_options(text: str) -> set[str]:
    """Options an argparse/pytest help declares: the option column of its option lines."""
    found: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if m:
            found.update(OPTION.findall(m.group(1)))
    return found


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Each verb's options, plus "pytest": the options `run` passes through to pytest."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "KSM_HARNESS_CACHE": str(cache), "COLUMNS": "200"}
    cmds = {verb: harness_cmd(*args, "--help") for verb, args in VERBS.items()}
    cmds["verbs"] = harness_cmd("--help")
    cmds["pytest"] = [sys.executable, "-m", "pytest", "--help"]  # in the empty cache dir
    procs = {name: subprocess.Popen(cmd, cwd=REPO if name != "pytest" else cache, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in cmds.items()}
    out: dict[str, set[str]] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{cmds[name]}: {stderr}"
        out[name] = _help_options(stdout)
        assert out[name] or name == "verbs", f"no options read from {name}'s --help"
        if name == "verbs":  # the verb column of the top-level help
            out[name] = set(re.findall(r"^    (\S+)", stdout, flags=re.M))
    out["run"] |= out.pop("pytest")  # run accepts every pytest option
    return out


def _commands(text: str) -> list[tuple[str, str]]:
    """(verb, its arguments) of every ksm-harness command the README shows: indented code
    lines (up to a comment) and inline code spans that start with ksm-harness or a verb."""
    pieces = [line.split("  #")[0] for line in text.splitlines() if line.startswith("    ")]
    pieces += re.findall(r"`([^`\n]+)`", text.replace("\n", " "))
    verbs = "|".join(re.escape(v) for v in sorted(VERBS, key=len, reverse=True))
    found = []
    for piece in pieces:
        for m in re.finditer(rf"(?:^|ksm-harness )({verbs})\b(?!-)(.*)", piece.strip()):
            args = re.split(r" -- |;| \| | > |\)|\$\(", m.group(2))[0]
            found.append((m.group(1), args.strip()))
    return found


def test_readme_is_at_most_300_lines() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, (f"README.md has {lines} lines (at most {MAX_LINES}): design "
                                f"goes to docs/design.md, figures to bench/FIGURES.md")


def test_setup_has_exactly_the_two_commands() -> None:
    text = README.read_text()
    section = text.split("## On a fresh Debian 12 machine", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert commands == SETUP
    assert "./ksm-harness selftest\n" in (REPO / ".ci" / "run").read_text()


def test_commands_are_found() -> None:
    # the extraction itself: a README whose commands it missed would pass vacuously
    shown = _commands(README.read_text())
    assert {"boot", "run", "plan", "merge", "bisect", "export"} <= {v for v, _ in shown}
    assert ("boot", "--dry-run") in shown
    assert ("run", "--x --kernel K") in _commands("`ksm-harness run --x --kernel K; y`")


def test_every_verb_shown_exists(options: dict[str, set[str]]) -> None:
    assert {"boot", "run", "selftest", "bisect-step"} <= options["verbs"]
    shown = set(re.findall(r"ksm-harness ([a-z][\w-]*)", README.read_text()))
    assert {"run", "boot", "bisect"} <= shown and shown <= options["verbs"], (
        f"README names verbs ksm-harness does not have: {shown - options['verbs']}")


def test_every_option_shown_with_a_verb_exists(options: dict[str, set[str]]) -> None:
    wrong = [f"{verb}: {opt}" for verb, args in _commands(README.read_text())
             for opt in OPTION.findall(args)
             if opt not in options[verb] and opt not in NOT_OURS]
    assert not wrong, f"README shows options the parser does not have: {wrong}"


def test_every_option_in_the_readme_exists_somewhere(options: dict[str, set[str]]) -> None:
    known = set().union(*(o for name, o in options.items() if name != "verbs")) | NOT_OURS
    unknown = sorted(set(OPTION.findall(README.read_text())) - known)
    assert not unknown, f"README mentions options no verb has: {unknown}"


def test_a_wrong_option_would_be_caught(options: dict[str, set[str]]) -> None:
    assert "--junitxml" in options["run"] and "--dry-run" in options["boot"]
    assert "--dry-run" not in options["run"] and "--runner-tag" not in options["boot"]


def test_docs_the_readme_points_to_exist() -> None:
    text = README.read_text()
    for path in re.findall(r"`((?:docs|bench|harness|guest-images|tests)/[\w./-]+)`", text):
        if "<" not in path and "*" not in path:
            assert (REPO / path).exists(), f"README points to {path}, which does not exist"



def test_known_bugs_per_debian_kernel_match_the_table() -> None:
    # the README names which known bugs Debian's kernels have; harness.kernel_bugs decides
    text = " ".join(README.read_text().split())
    m = re.search(r"Debian's 6\.1 has (.*?); Debian's 6\.12 (.*?)\.", text)
    assert m, "README: the sentence naming the known bugs of Debian's 6.1 and 6.12 is gone"
    for named, upstream in ((m.group(1), "6.1.192"), (m.group(2), "6.12.117")):
        have = {b.id for b in KNOWN_BUGS.values() if b.affects(parse_version(upstream))}
        assert set(re.findall(r"`([\w-]+)`", named)) == have, upstream
