"""What CI reads after a run: JUnit (pytest's own ``--junitxml``, enriched), a JSON results
file, KTAP on request, and a report directory with a reproducer and the console log of every
failed guest test plus an HTML summary.

Why pytest's JUnit writer and not junit-xml: pytest already writes one test case per test with
its captured output, under xdist too; we only add properties (``item.user_properties``), make a
failure's ``message`` the report title, and, at the end, reshape the file so that it validates
against the schema Jenkins' xUnit plugin uses (``junit-10.xsd``, which has no per-test-case
``<properties>``): run-wide properties (kernel release, config hash, accelerator, topology) go
to the ``<testsuite>``, per-test ones (seed, console log, kernel report) to the test case's
``<system-out>`` as ``name: value`` lines plus ``[[ATTACHMENT|console.log]]``, which Jenkins'
attachments plugin and GitLab both link.

The logic (titles, records, KTAP, reproducers, the JUnit reshaping) is plain functions over
records; the pytest hooks at the end only collect and write.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter

from harness import paths

RUN_WIDE = ("kernel", "kernel_release", "kernel_config_hash", "accelerator", "topology")
RESULTS_VERSION = 1
# "[CATEGORY] title" lines that the health monitor writes into a failure's text
_FINDING = re.compile(r"^\[([A-Z_]+)\] (.+)$", re.M)
_PREFIXES = ("AssertionError: ", "Failed: ", "builtins.AssertionError: ")


# --- failure titles ---------------------------------------------------------------------

def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def title_of(message: str) -> str:
    """The one-line title of a failure message: its first line, without exception noise."""
    line = first_line(message)
    for p in _PREFIXES:
        if line.startswith(p):
            line = line[len(p):]
    return line[:300]


def kernel_category(longrepr_text: str) -> str | None:
    m = _FINDING.search(longrepr_text)
    return m.group(1) if m else None


class TitledRepr(TerminalRepr):
    """A failure's long representation whose crash message is ``title``: pytest's JUnit writer
    puts ``reprcrash.message`` in the ``message`` attribute and ``str()`` in the body."""

    class _Crash:
        def __init__(self, message: str, path: str, lineno: int) -> None:
            self.message, self.path, self.lineno = message, path, lineno

    def __init__(self, title: str, inner: Any, path: str = "", lineno: int = 0) -> None:
        self.inner = inner
        crash = getattr(inner, "reprcrash", None)
        self.reprcrash = self._Crash(title, getattr(crash, "path", path),
                                     getattr(crash, "lineno", lineno))
        self.sections = getattr(inner, "sections", [])

    def toterminal(self, tw: TerminalWriter) -> None:
        if hasattr(self.inner, "toterminal"):
            self.inner.toterminal(tw)
        else:
            for line in str(self.inner).splitlines():
                tw.line(line)

    def __str__(self) -> str:
        return str(self.inner)


def report_title(report: pytest.TestReport) -> str:
    for name, value in report.user_properties:
        if name == "kernel_report":
            return str(value)
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return title_of(crash.message)
    return title_of(str(report.longrepr))


# --- records ------------------------------------------------------------------------------

@dataclass
class Result:
    nodeid: str
    outcome: str = "passed"           # passed, failed, error (setup/teardown), skipped, xfailed
    duration: float = 0.0
    message: str = ""                 # the title: kernel report, assertion, skip reason
    kernel_report: str | None = None  # the health monitor's report title
    category: str | None = None       # its category (WARNING, HANG, VM_DEAD, ...) or ASSERTION
    when: str = ""                    # the phase that decided the outcome
    properties: dict[str, str] = field(default_factory=dict)
    text: str = ""                    # the whole failure text

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def merge_report(result: Result, report: pytest.TestReport) -> None:
    """Fold one phase's report into the test's record (the first failure decides)."""
    result.duration += getattr(report, "duration", 0.0) or 0.0
    for name, value in report.user_properties:
        if name == "kernel_report":
            result.kernel_report = result.kernel_report or str(value)
        else:
            result.properties[str(name)] = str(value)
    if result.failed:
        return
    if report.failed:
        result.outcome = "failed" if report.when == "call" else "error"
        result.when = report.when
        result.text = str(report.longrepr)
        result.message = report_title(report)
        result.category = kernel_category(result.text) if result.kernel_report else None
        if result.category is None and result.kernel_report is None:
            result.category = "ASSERTION" if report.when == "call" else "SETUP"
    elif report.skipped:
        if hasattr(report, "wasxfail"):
            result.outcome, result.message = "xfailed", str(report.wasxfail)
        else:
            result.outcome = "skipped"
            lr = report.longrepr
            result.message = str(lr[2]) if isinstance(lr, tuple) else title_of(str(lr))
            if result.message.startswith("Skipped: "):
                result.message = result.message[len("Skipped: "):]
        result.when = report.when


def results_document(results: Iterable[Result], meta: dict[str, Any]) -> dict[str, Any]:
    tests = [asdict(r) for r in results]
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"version": RESULTS_VERSION, **meta, "summary": counts, "tests": tests}


def load_results(path: Path | str) -> tuple[dict[str, Any], list[Result]]:
    """A results file written by ``--results-json``: (its metadata, its records)."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "tests" not in doc:
        raise ValueError(f"{path}: not a ksm-harness results file")
    return doc, [Result.from_dict(t) for t in doc["tests"]]


# --- KTAP -----------------------------------------------------------------------------------

def ktap_name(nodeid: str) -> str:
    return re.sub(r"[^\w.:\[\]=-]+", "_", nodeid)


def ktap(results: list[Result]) -> str:
    """KTAP version 1: one line per test, diagnostics (the failure title) before it."""
    out = ["KTAP version 1", f"1..{len(results)}"]
    for i, r in enumerate(results, 1):
        name = ktap_name(r.nodeid)
        if r.failed:
            for line in (r.message or "failed").splitlines():
                out.append(f"# {line}")
            out.append(f"not ok {i} {name}")
        elif r.outcome in ("skipped", "xfailed"):
            reason = first_line(r.message).replace("#", "")
            out.append(f"ok {i} {name} # SKIP {reason}".rstrip())
        else:
            out.append(f"ok {i} {name}")
    return "\n".join(out) + "\n"


# --- JUnit ------------------------------------------------------------------------------------

# junit-10.xsd of the Jenkins xUnit plugin (MIT, Gregory Boissinot), reduced to what it
# checks; ``ksm-harness junit-check FILE`` validates against it with xmllint.
JUNIT_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:simpleType name="SUREFIRE_TIME">
    <xs:restriction base="xs:string">
      <xs:pattern value="(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\\.[0-9]*)?"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:complexType name="rerunType" mixed="true">
    <xs:sequence>
      <xs:element name="stackTrace" type="xs:string" minOccurs="0"/>
      <xs:element name="system-out" type="xs:string" minOccurs="0"/>
      <xs:element name="system-err" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="message" type="xs:string"/>
    <xs:attribute name="type" type="xs:string" use="required"/>
  </xs:complexType>
  <xs:element name="failure"><xs:complexType mixed="true">
    <xs:attribute name="type" type="xs:string"/><xs:attribute name="message" type="xs:string"/>
  </xs:complexType></xs:element>
  <xs:element name="error"><xs:complexType mixed="true">
    <xs:attribute name="type" type="xs:string"/><xs:attribute name="message" type="xs:string"/>
  </xs:complexType></xs:element>
  <xs:element name="skipped"><xs:complexType mixed="true">
    <xs:attribute name="type" type="xs:string"/><xs:attribute name="message" type="xs:string"/>
  </xs:complexType></xs:element>
  <xs:element name="properties"><xs:complexType><xs:sequence>
    <xs:element ref="property" minOccurs="0" maxOccurs="unbounded"/>
  </xs:sequence></xs:complexType></xs:element>
  <xs:element name="property"><xs:complexType>
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="value" type="xs:string" use="required"/>
  </xs:complexType></xs:element>
  <xs:element name="system-err" type="xs:string"/>
  <xs:element name="system-out" type="xs:string"/>
  <xs:element name="rerunFailure" type="rerunType"/>
  <xs:element name="rerunError" type="rerunType"/>
  <xs:element name="flakyFailure" type="rerunType"/>
  <xs:element name="flakyError" type="rerunType"/>
  <xs:element name="testcase"><xs:complexType>
    <xs:sequence><xs:choice minOccurs="0" maxOccurs="unbounded">
      <xs:element ref="skipped"/><xs:element ref="error"/><xs:element ref="failure"/>
      <xs:element ref="rerunFailure" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element ref="rerunError" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element ref="flakyFailure" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element ref="flakyError" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element ref="system-out"/><xs:element ref="system-err"/>
    </xs:choice></xs:sequence>
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="time" type="xs:string"/>
    <xs:attribute name="classname" type="xs:string"/>
    <xs:attribute name="group" type="xs:string"/>
  </xs:complexType></xs:element>
  <xs:element name="testsuite"><xs:complexType>
    <xs:choice minOccurs="0" maxOccurs="unbounded">
      <xs:element ref="testsuite"/><xs:element ref="properties"/><xs:element ref="testcase"/>
      <xs:element ref="system-out"/><xs:element ref="system-err"/>
    </xs:choice>
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="tests" type="xs:string" use="required"/>
    <xs:attribute name="failures" type="xs:string" use="required"/>
    <xs:attribute name="errors" type="xs:string" use="required"/>
    <xs:attribute name="group" type="xs:string"/>
    <xs:attribute name="time" type="SUREFIRE_TIME"/>
    <xs:attribute name="skipped" type="xs:string"/>
    <xs:attribute name="timestamp" type="xs:string"/>
    <xs:attribute name="hostname" type="xs:string"/>
    <xs:attribute name="id" type="xs:string"/>
    <xs:attribute name="package" type="xs:string"/>
    <xs:attribute name="file" type="xs:string"/>
    <xs:attribute name="log" type="xs:string"/>
    <xs:attribute name="url" type="xs:string"/>
  </xs:complexType></xs:element>
  <xs:element name="testsuites"><xs:complexType>
    <xs:sequence><xs:element ref="testsuite" minOccurs="0" maxOccurs="unbounded"/></xs:sequence>
    <xs:attribute name="name" type="xs:string"/>
    <xs:attribute name="time" type="SUREFIRE_TIME"/>
    <xs:attribute name="tests" type="xs:string"/>
    <xs:attribute name="failures" type="xs:string"/>
    <xs:attribute name="errors" type="xs:string"/>
  </xs:complexType></xs:element>
</xs:schema>
"""


def reshape_junit(path: Path) -> None:
    """Move pytest's per-test-case ``<properties>`` where junit-10.xsd allows them."""
    tree = ET.parse(path)
    root = tree.getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        run_wide: dict[str, str] = {}
        for case in suite.findall("testcase"):
            props = case.find("properties")
            if props is None:
                continue
            case.remove(props)
            lines = []
            for p in props.findall("property"):
                name, value = p.get("name", ""), p.get("value", "")
                if name in RUN_WIDE:
                    run_wide.setdefault(name, value)
                else:
                    lines.append(f"{name}: {value}")
                    if name.startswith("console_log"):
                        lines.append(f"[[ATTACHMENT|{value}]]")
            if lines:
                out = case.find("system-out")
                if out is None:
                    out = ET.SubElement(case, "system-out")
                    out.text = ""
                out.text = "\n".join(lines) + "\n" + (out.text or "")
        if run_wide:
            props = suite.find("properties")
            if props is None:
                props = ET.Element("properties")
                suite.insert(0, props)
            have = {p.get("name") for p in props.findall("property")}
            for name, value in run_wide.items():
                if name not in have:
                    ET.SubElement(props, "property", name=name, value=value)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def validate_junit(path: Path) -> list[str]:
    """xmllint's complaints about ``path`` against junit-10.xsd; [] when valid."""
    if not shutil.which("xmllint"):
        raise FileNotFoundError("xmllint not found (Debian: apt-get install libxml2-utils)")
    with tempfile.NamedTemporaryFile("w", suffix=".xsd", delete=False) as fh:
        fh.write(JUNIT_XSD)
    try:
        r = subprocess.run(["xmllint", "--noout", "--schema", fh.name, str(path)],
                           capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if r.returncode == 0:
        return []
    return [line for line in r.stderr.splitlines() if line and not line.endswith("validates")]


# --- reproducers ------------------------------------------------------------------------------

def slug(nodeid: str) -> str:
    s = re.sub(r"[^\w.=-]+", "_", nodeid.split("/")[-1]).strip("_")
    return s[-100:] or "test"


def rerun_argv(nodeid: str, options: dict[str, Any], seed: str | None,
               program: str = "./ksm-harness") -> list[str]:
    """``ksm-harness run`` arguments that re-run just ``nodeid`` the same way."""
    argv = [program, "run", nodeid]
    for opt in ("kernel", "modules", "numa", "accel", "append", "image"):
        value = options.get(opt)
        if value not in (None, "", "auto") or (opt == "numa" and value):
            argv += [f"--{opt}", str(value)]
    if seed is not None:
        argv += ["--ksm-seed", str(seed)]
    return argv


def reproducer_script(result: Result, options: dict[str, Any], repo: Path,
                      report_dir: Path) -> str:
    p = result.properties
    rootdir = str(options.get("rootdir") or repo)  # node ids are relative to it
    program = "./ksm-harness" if Path(rootdir) == repo else str(repo / "ksm-harness")
    argv = rerun_argv(result.nodeid, options, p.get("seed"), program)
    argv += ["--report-dir", str(report_dir.resolve() / "rerun"), "-p", "no:cacheprovider"]
    qemu = ""
    qfile = p.get("qemu_cmdline")
    if qfile and Path(qfile).is_file():
        qemu = Path(qfile).read_text().strip()
    lines = [
        "#!/bin/sh",
        f"# Re-runs {result.nodeid} on the same kernel, topology and seed.",
        f"# It failed with: {result.message}",
        f"# kernel {p.get('kernel_release', '?')} (config {p.get('kernel_config_hash', '?')}),"
        f" accel {p.get('accelerator', '?')}, topology {p.get('topology', '?')}",
        "set -e",
        f"cd {shlex.quote(rootdir)}",
    ]
    if qemu:
        lines.append("echo " + shlex.quote(
            "ksm-harness: the failing run's QEMU command line (ports and run paths differ "
            "this time):"))
        lines.append("cat <<'QEMU_EOF'\n" + qemu + "\nQEMU_EOF")
    lines.append("echo " + shlex.quote("+ " + shlex.join(argv)))
    lines.append("exec " + shlex.join(argv) + ' "$@"')
    return "\n".join(lines) + "\n"


# --- what a guest test ran on -------------------------------------------------------------------

def guest_properties(item: pytest.Item) -> list[tuple[str, str]]:
    from harness.guest import Guest
    props: list[tuple[str, str]] = []
    guests: list[Guest] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Guest) and value not in guests:
            guests.append(value)
    for i, guest in enumerate(guests):
        vm = guest.vm
        suffix = "" if i == 0 else f"_{i + 1}"
        if i == 0:
            k = vm.spec.kernel
            props += [("kernel", str(k.path)), ("kernel_release", k.release),
                      ("kernel_config_hash", k.config_hash), ("accelerator", vm.spec.accel.name),
                      ("topology", vm.spec.topology.describe())]
        props += [(f"console_log{suffix}", str(vm.console_log)),
                  (f"qemu_cmdline{suffix}", str(vm.dir / "qemu-cmdline.txt"))]
    seed = getattr(item, "ksm_seed", None)
    if seed is None:
        seed = getattr(item, "funcargs", {}).get("ksm_seed")
    if seed is not None:
        props.append(("seed", str(seed)))
    return props


# --- the pytest plugin ------------------------------------------------------------------------

RESULTS = pytest.StashKey[dict[str, Result]]()
STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ksm-harness-report", "ksm-harness reports")
    g.addoption("--results-json", metavar="PATH", default=None,
                help="write per-test results (outcome, duration, title, properties) as JSON")
    g.addoption("--ktap", metavar="PATH", default=None, help="write KTAP results")
    g.addoption("--report-dir", metavar="DIR", default=None,
                help="reproducers, console logs and summary.html of a run with guest tests "
                     "(default: results/)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}
    config.stash[STARTED] = time.time()
    _CONFIG.append(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config in _CONFIG:
        _CONFIG.remove(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # type: ignore[no-untyped-def]
    yield
    have = {name for name, _ in item.user_properties}
    item.user_properties.extend(p for p in guest_properties(item) if p[0] not in have)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    # the monitor adds its title to this phase's report; JUnit reads the teardown report's
    for prop in rep.user_properties:
        if prop not in item.user_properties:
            item.user_properties.append(prop)
    seed = getattr(item, "ksm_seed", None)  # the seed fixture runs after our setup hook
    if seed is not None and ("seed", str(seed)) not in item.user_properties:
        item.user_properties.append(("seed", str(seed)))
        rep.user_properties.append(("seed", str(seed)))


_CONFIG: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Before JUnit's writer: the failure's title becomes its message; record the phase."""
    worker = bool(_CONFIG) and hasattr(_CONFIG[-1], "workerinput")  # xdist: controller wraps
    if report.failed and report.longrepr is not None and not worker and not isinstance(
            report.longrepr, TitledRepr):
        path, lineno = str(report.location[0]), int(report.location[1] or 0)
        report.longrepr = TitledRepr(report_title(report), report.longrepr, path, lineno)
    if _CONFIG:
        results = _CONFIG[-1].stash[RESULTS]
        merge_report(results.setdefault(report.nodeid, Result(report.nodeid)), report)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes
        return
    results = list(config.stash.get(RESULTS, {}).values())
    xml = getattr(config.option, "xmlpath", None)
    if xml and Path(xml).is_file():
        try:
            reshape_junit(Path(xml))
        except ET.ParseError as exc:
            print(f"ksm-harness: could not reshape {xml}: {exc}")
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(config.stash[STARTED])),
            "duration": round(time.time() - config.stash[STARTED], 3),
            "options": _options(config),
            "exitstatus": int(session.exitstatus)}
    doc = results_document(results, meta)
    jpath = config.getoption("results_json")
    if jpath:
        _write(Path(jpath), json.dumps(doc, indent=1) + "\n")
    kpath = config.getoption("ktap")
    if kpath:
        _write(Path(kpath), ktap(results))
    rdir = config.getoption("report_dir")
    if rdir or any("kernel_release" in r.properties for r in results):
        from harness.results import html as summary
        write_report_dir(Path(rdir or "results"), results, doc, config)
        summary.write(Path(rdir or "results"), doc, junit=Path(xml) if xml else None,
                      results_json=Path(jpath) if jpath else None)


def _options(config: pytest.Config) -> dict[str, Any]:
    o = config.option
    out = {k: getattr(o, k, None) for k in ("kernel", "modules", "numa", "accel", "append",
                                             "image")}
    out["ksm_seed"] = getattr(o, "ksm_seed", None)
    out["args"] = list(config.invocation_params.args)
    out["rootdir"] = str(config.rootpath)
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_report_dir(rdir: Path, results: list[Result], doc: dict[str, Any],
                     config: pytest.Config | None = None,
                     options: dict[str, Any] | None = None) -> list[Path]:
    """results.json, and per failed test: reproducer.sh, failure.txt, console log copies."""
    rdir.mkdir(parents=True, exist_ok=True)
    options = options if options is not None else (_options(config) if config else {})
    _write(rdir / "results.json", json.dumps(doc, indent=1) + "\n")
    made = []
    for r in results:
        if not r.failed:
            continue
        d = rdir / "failures" / slug(r.nodeid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "failure.txt").write_text(f"{r.nodeid}\n{r.message}\n\n{r.text}\n")
        for name, value in r.properties.items():
            if name.startswith("console_log") and Path(value).is_file():
                shutil.copyfile(value, d / f"{name.replace('_log', '')}.log")
        if "kernel_release" in r.properties or r.properties.get("console_log"):
            script = d / "reproducer.sh"
            script.write_text(reproducer_script(r, options, paths.REPO, rdir))
            script.chmod(0o755)
            made.append(script)
    return made
