"""KCIDB (kernelci.org's common reporting database) I/O data, schema v5, from results files.

One checkout per kernel source (a tree's git commit, else the kernel's release), one build per
kernel (release, compiler, config), one test per scenario per cell. Ids are
``ORIGIN:...``; a test's ``path`` is dotted (``tests/ksm/test_numa.py::test_x[disk]`` ->
``ksm.numa.x.disk``). Status, as the schema defines it:

- FAIL: the kernel was found faulty -- a kernel report, an assertion, data corruption, a
  leak, a hang; also a known kernel bug still present (an xfail: the kernel *is* faulty;
  ``misc.known_bug`` says which);
- MISS: the test did not run for a harness reason (categories BOOT, SETUP, INFRA);
- ERROR: the test did not complete and the kernel's state is unknown (the VM was lost, a
  failure without a finding);
- SKIP: not applicable to this kernel; PASS (an XPASS too: the known bug is fixed there).

``log_excerpt`` is the ranked findings' text within the schema's 16384 characters; the
console logs, the failure text and the reproducer are output files (``file://`` URLs, or
under ``artifacts_url`` when the files are published, e.g. as CI artifacts).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.findings import Category
from harness.results.model import Outcome, Result
from harness.results.reproducer import slug

SCHEMA = {"major": 5, "minor": 0}
EXCERPT_MAX = 16384  # the schema's maxLength of log_excerpt
ORIGIN_RE = re.compile(r"[a-z0-9_]+")
MISSED = frozenset({Category.BOOT, Category.SETUP, Category.INFRA})


def test_path(nodeid: str) -> str:
    """``tests/ksm/test_numa.py::test_migrated_pages_stay_per_node`` ->
    ``ksm.numa.migrated_pages_stay_per_node``; parameters become a last component."""
    file, _, name = nodeid.partition("::")
    parts = [p.removesuffix(".py") for p in file.split("/") if p not in ("tests", "")]
    func, _, param = name.partition("[")
    parts += [p for p in func.split("::") if p]
    if param:
        parts.append(param.rstrip("]"))
    clean = [re.sub(r"[^a-zA-Z0-9_-]+", "_", p.removeprefix("test_")).strip("_") or "_"
             for p in parts]
    return ".".join(clean)


def status(r: Result) -> str:
    if r.outcome is Outcome.PASSED or r.outcome is Outcome.XPASSED:
        return "PASS"
    if r.outcome is Outcome.SKIPPED:
        return "SKIP"
    if r.outcome is Outcome.XFAILED:
        return "FAIL"
    cat = r.category
    if cat is None:
        return "ERROR"
    if cat in MISSED:
        return "MISS"
    if cat is Category.VM_DEAD:
        return "ERROR"
    return "FAIL"  # a kernel report, a hang, an assertion, corruption, a leak, a taint


def excerpt(r: Result) -> str:
    parts = [r.title] if r.title else []
    for f in r.findings:
        parts.append(f"[{f.category.value}] {f.title}" + (f"\n{f.text.strip()}" if f.text
                                                         else ""))
    text = "\n\n".join(parts).replace("\0", "")
    return text if len(text) <= EXCERPT_MAX else text[:EXCERPT_MAX - 16] + "\n[... truncated]"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


class Exporter:
    def __init__(self, origin: str, artifacts_url: str | None = None,
                 artifacts_root: Path | None = None) -> None:
        if not ORIGIN_RE.fullmatch(origin):
            raise ValueError(f"--origin {origin!r}: use lower-case letters, digits and _ "
                             "(KCIDB's origin syntax)")
        self.origin = origin
        self.artifacts_url = artifacts_url.rstrip("/") if artifacts_url else None
        self.root = (artifacts_root or Path.cwd()).resolve()
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, dict[str, Any]] = {}
        self.tests: list[dict[str, Any]] = []
        self.test_ids: set[str] = set()

    def url(self, path: Path) -> str:
        path = path.resolve()
        if self.artifacts_url:
            try:
                return f"{self.artifacts_url}/{quote(str(path.relative_to(self.root)))}"
            except ValueError:
                pass
        return path.as_uri()

    def _build(self, doc: dict[str, Any], results: list[Result]) -> str:
        k = dict(doc.get("kernel") or {})
        props = next((r.properties for r in results if "kernel_release" in r.properties), {})
        release = k.get("release") or props.get("kernel_release") or "unknown"
        spec = (doc.get("cell") or {}).get("kernel") or (doc.get("options") or {}).get("kernel")
        commit = k.get("commit") or ""
        checkout = f"{self.origin}:{commit or _digest(spec or 'debian', release)}"
        if checkout not in self.checkouts:
            c: dict[str, Any] = {"id": checkout, "origin": self.origin, "valid": True,
                                 "git_commit_name": release,
                                 "misc": {"kernel": spec or "debian", "release": release}}
            if commit and re.fullmatch(r"[0-9a-f]{40}", commit):
                c["git_commit_hash"] = commit
            if k.get("banner"):
                c["comment"] = k["banner"].replace("\0", "")
            self.checkouts[checkout] = c
        config = k.get("config_hash") or props.get("kernel_config_hash") or "unknown"
        build = f"{self.origin}:{_digest(checkout, release, config, k.get('path'))}"
        if build not in self.builds:
            b: dict[str, Any] = {"id": build, "checkout_id": checkout, "origin": self.origin,
                                 "architecture": "x86_64", "status": "PASS",
                                 "config_name": k.get("origin") or spec or "debian",
                                 "misc": {"release": release, "config_hash": config,
                                          "kernel": spec or "debian"}}
            if k.get("compiler") or props.get("kernel_compiler"):
                b["compiler"] = k.get("compiler") or props["kernel_compiler"]
            self.builds[build] = b
        return build

    def add(self, doc: dict[str, Any], results: list[Result], report_dir: Path) -> None:
        """One results file (its metadata and records) and the report directory beside it."""
        if not results:  # e.g. a shard that selected none of this cell's tests
            return
        build = self._build(doc, results)
        cell = (doc.get("cell") or {}).get("id") or "default"
        created = doc.get("created") or ""
        for r in results:
            props = r.properties
            tid = f"{self.origin}:{cell}:{created}:{test_path(r.nodeid)}"
            n = 2
            while tid in self.test_ids:  # the same test twice in one second of one cell
                tid, n = f"{self.origin}:{cell}:{created}:{test_path(r.nodeid)}#{n}", n + 1
            self.test_ids.add(tid)
            t: dict[str, Any] = {
                "id": tid,
                "build_id": build, "origin": self.origin, "path": test_path(r.nodeid),
                "status": status(r), "duration": round(r.duration, 3),
                "environment": {"comment": f"QEMU {props.get('accelerator', '?')} guest, "
                                           f"{props.get('topology', '?')}, on "
                                           f"{doc.get('host', '?')}",
                                "misc": {"host": doc.get("host"), "cell": cell,
                                         "accelerator": props.get("accelerator"),
                                         "topology": props.get("topology")}},
                "misc": {"nodeid": r.nodeid, "outcome": r.outcome.value,
                         "category": r.category.value if r.category else None,
                         "harness_version": doc.get("harness_version")},
            }
            if _iso(r.start):
                t["start_time"] = _iso(r.start)
            if r.title:
                t["comment"] = r.title.replace("\0", "")[:1000]
            if r.outcome is Outcome.XFAILED or r.outcome is Outcome.XPASSED:
                t["misc"]["known_bug"] = r.reason
            if r.kernel_report is not None:
                t["misc"]["kernel_report"] = r.kernel_report.title
            if r.failed or r.outcome is Outcome.XPASSED:
                t["log_excerpt"] = excerpt(r)
            files = self._files(r, report_dir)
            if files:
                t["output_files"] = files
                logs = [f for f in files if f["name"].startswith("console")]
                if logs:
                    t["log_url"] = logs[0]["url"]
            self.tests.append(t)

    def _files(self, r: Result, report_dir: Path) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        fdir = report_dir / "failures" / slug(r.nodeid)
        if fdir.is_dir():  # the report directory's own copies
            for p in sorted(fdir.iterdir()):
                if p.is_file() and (p.suffix in (".log", ".txt") or p.name == "reproducer.sh"):
                    out.append({"name": p.name, "url": self.url(p)})
        if not any(f["name"].startswith("console") for f in out):
            for key, value in r.properties.items():
                if key.startswith("console_log") and value and r.failed:
                    out.append({"name": key.replace("_log", "") + ".log",
                                "url": self.url(Path(value))})
        return out

    def document(self) -> dict[str, Any]:
        return {"version": dict(SCHEMA), "checkouts": list(self.checkouts.values()),
                "builds": list(self.builds.values()), "tests": self.tests}


def export(files: Iterable[tuple[dict[str, Any], list[Result], Path]], origin: str,
           artifacts_url: str | None = None, artifacts_root: Path | None = None
           ) -> dict[str, Any]:
    """KCIDB I/O data of results files: (metadata, records, the file's report directory)."""
    ex = Exporter(origin, artifacts_url, artifacts_root)
    for doc, results, rdir in files:
        ex.add(doc, results, rdir)
    return ex.document()
