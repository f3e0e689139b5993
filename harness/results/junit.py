"""The one JUnit writer: built from :class:`Result` records, valid against the schema Jenkins'
xUnit plugin uses (``junit-10.xsd``, a data file beside this module).

That schema has no per-test-case ``<properties>``: run-wide properties (kernel release, config
hash, accelerator, topology) go to the ``<testsuite>``; per-test ones (seed, console log, QEMU
command line) to the test case's ``<system-out>`` as ``name: value`` lines, plus
``[[ATTACHMENT|console.log]]``, which Jenkins' attachments plugin and GitLab both link. A
failure's ``message`` is the top finding's title, its ``type`` the finding's category, its
text every finding (ranked) and the traceback.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.results import files
from harness.results.model import Outcome, Result

XSD = Path(__file__).with_name("junit-10.xsd")
RUN_WIDE = ("kernel", "kernel_release", "kernel_config_hash", "kernel_commit", "kernel_compiler",
            "accelerator", "topology")


@dataclass
class Suite:
    name: str
    results: list[Result]
    properties: dict[str, str] = field(default_factory=dict)  # besides the run-wide ones
    prefix: str = ""  # prepended to each case's classname (a matrix column's label)


def _classname(nodeid: str, prefix: str) -> str:
    path = nodeid.split("::")[0].removesuffix(".py").replace("/", ".")
    return f"{prefix}.{path}" if prefix else path


def _case(parent: ET.Element, r: Result, prefix: str) -> None:
    name = r.nodeid.split("::", 1)[-1]
    case = ET.SubElement(parent, "testcase", classname=_classname(r.nodeid, prefix), name=name,
                         time=f"{r.duration:.3f}")
    if r.failed or r.outcome is Outcome.XPASSED:
        tag = "error" if r.outcome is Outcome.ERROR else "failure"
        kind = r.category.value if r.category else "XPASS"
        el = ET.SubElement(case, tag, message=r.title[:300] or r.outcome.value, type=kind)
        el.text = r.text or r.title
    elif r.outcome in (Outcome.SKIPPED, Outcome.XFAILED):
        prefix_ = "expected failure: " if r.outcome is Outcome.XFAILED else ""
        ET.SubElement(case, "skipped", message=(prefix_ + r.reason)[:300])
    lines = []
    for key, value in r.properties.items():
        if key in RUN_WIDE:
            continue
        lines.append(f"{key}: {value}")
        if key.startswith("console_log"):
            lines.append(f"[[ATTACHMENT|{value}]]")
    if lines:
        ET.SubElement(case, "system-out").text = "\n".join(lines) + "\n"


def document(suites: Iterable[Suite], started: float | None = None) -> ET.ElementTree:
    root = ET.Element("testsuites", name="ksm-harness")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    elapsed = 0.0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started or time.time()))
    for s in suites:
        counts = {
            "tests": len(s.results),
            "failures": sum(r.outcome in (Outcome.FAILED, Outcome.XPASSED) for r in s.results),
            "errors": sum(r.outcome is Outcome.ERROR for r in s.results),
            "skipped": sum(r.outcome in (Outcome.SKIPPED, Outcome.XFAILED) for r in s.results),
        }
        took = sum(r.duration for r in s.results)
        attrs = {"name": s.name, **{k: str(v) for k, v in counts.items()},
                 "time": f"{took:.3f}", "timestamp": stamp, "hostname": socket.gethostname()}
        suite = ET.SubElement(root, "testsuite", attrs)
        props = dict(s.properties)
        for r in s.results:
            for key in RUN_WIDE:
                if key in r.properties:
                    props.setdefault(key, r.properties[key])
        if props:
            pel = ET.SubElement(suite, "properties")
            for key, value in props.items():
                ET.SubElement(pel, "property", name=key, value=str(value))
        for r in s.results:
            _case(suite, r, s.prefix)
        for k in totals:
            totals[k] += counts[k]
        elapsed += took
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    root.set("time", f"{elapsed:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: Path, suites: Iterable[Suite], started: float | None = None) -> Path:
    root = document(suites, started).getroot()
    assert root is not None
    files.replace_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return path


def to_string(suites: Iterable[Suite]) -> str:
    root = document(suites).getroot()
    assert root is not None
    return ET.tostring(root, encoding="unicode")


def validate(path: Path) -> list[str]:
    """xmllint's complaints about ``path`` against junit-10.xsd; [] when valid."""
    if not shutil.which("xmllint"):
        raise FileNotFoundError("xmllint not found (Debian: apt-get install libxml2-utils)")
    r = subprocess.run(["xmllint", "--noout", "--schema", str(XSD), str(path)],
                       capture_output=True, text=True)
    if r.returncode == 0:
        return []
    return [line for line in r.stderr.splitlines() if line and not line.endswith("validates")]


def check(args: argparse.Namespace) -> int:
    """``ksm-harness junit-check XML...``: each file valid or not (with xmllint's complaints);
    1 when any is not."""
    bad = 0
    for f in args.files:
        if not Path(f).is_file():
            raise HarnessError(f"{f}: no such file")
        try:
            errors = validate(Path(f))
        except FileNotFoundError as exc:
            raise HarnessError(str(exc)) from None
        print(f"{f}: {'valid' if not errors else 'INVALID'} (junit-10.xsd)")
        for e in errors:
            print(f"  {e}")
        bad += bool(errors)
    return 1 if bad else 0
