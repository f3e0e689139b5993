"""A :class:`Result` record per test, folded from its phases' reports (findings travel on
each report as data, see ``watch``), and at the end of the run the files CI reads: JUnit
(``--junitxml``, written by harness.results.junit in place of pytest's writer), every file of
harness.results.writers (``--results-json``, ``--ktap``, ``--markdown``, ...), and the report
directory (results.json, failures with reproducers, summary.html).
Under xdist only the controller records and writes.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from harness import cellplan, faultpoints, options, paths
from harness.assets.kernel import Kernel
from harness.errors import HarnessError
from harness.findings import Category, Finding
from harness.guest_handle import Guest
from harness.pytest_plugin.sharding import SELECTED
from harness.pytest_plugin.watch import PROPERTY
from harness.results import files, html, junit, reproducer, writers
from harness.results.model import Outcome, Result, results_document
from harness.version import harness_version

RESULTS = pytest.StashKey[dict[str, Result]]()
STARTED = pytest.StashKey[float]()
PYTEST_JUNIT = pytest.StashKey[tuple[Any, str]]()
KERNEL = pytest.StashKey[dict[str, str]]()  # the first guest's kernel, for the run's metadata
INTERRUPT = pytest.StashKey[str]()  # what interrupted the run: SIGINT, SIGTERM


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}
    config.stash[STARTED] = time.time()
    # One JUnit writer: ours, from the records. pytest's junitxml plugin stays registered
    # (its unconfigure expects it) but writes to /dev/null; its "generated xml file" line
    # gets the real path back once ours is written.
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "LogXML" and hasattr(plugin, "logfile"):
            config.stash[PYTEST_JUNIT] = (plugin, plugin.logfile)
            plugin.logfile = os.devnull


def guest_properties(item: pytest.Item) -> list[tuple[str, str]]:
    """What a guest test ran on: kernel, release, config hash, accelerator, topology (of the
    first guest), and each guest's console log and QEMU command line."""
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
            props += [(f"kernel_{key}", value) for key, value in kernel_facts(k).items()
                      if key in ("commit", "compiler") and value]
        props += [(f"console_log{suffix}", str(vm.console_log)),
                  (f"qemu_cmdline{suffix}", str(vm.dir / "qemu-cmdline.txt"))]
        if guest.boot_seconds is not None:  # this test waited for (or replaced) the boot
            props.append((f"boot_seconds{suffix}", f"{guest.boot_seconds:.2f}"))
            guest.boot_seconds = None
    return props


def kernel_facts(k: Kernel) -> dict[str, str]:
    """What a dashboard needs to know about the kernel a guest ran."""
    return {"release": k.release, "origin": k.origin, "path": str(k.path), "banner": k.banner,
            "compiler": k.compiler, "commit": k.commit, "config_hash": k.config_hash}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, pluggy.Result[None], None]:
    yield
    have = {name for name, _ in item.user_properties}
    item.user_properties.extend(p for p in guest_properties(item) if p[0] not in have)
    if KERNEL not in item.config.stash:
        guest = next((v for v in getattr(item, "funcargs", {}).values()
                      if isinstance(v, Guest)), None)
        if guest is not None:
            item.config.stash[KERNEL] = kernel_facts(guest.vm.spec.kernel)


def merge(result: Result, rep: pytest.TestReport) -> None:
    """Fold one phase's report into the test's record: the first failing phase decides the
    outcome; findings of every phase are kept, ranked."""
    result.durations[rep.when] = result.durations.get(rep.when, 0.0) + (rep.duration or 0.0)
    if result.start is None:
        result.start = getattr(rep, "start", None)
    for name, value in rep.user_properties:
        if name == PROPERTY and isinstance(value, list):
            result.add(Finding.from_dict(d) for d in value)
        else:
            result.properties[str(name)] = str(value)
    if result.failed:
        if rep.failed:
            result.text += f"\n\n--- {rep.when} ---\n{rep.longreprtext}"
        return
    if rep.failed:
        result.outcome = Outcome.FAILED if rep.when == "call" else Outcome.ERROR
        result.when = rep.when
        result.text = rep.longreprtext
        if not result.findings:  # a report from a plugin that is not ours
            result.add([Finding(Category.ASSERTION if rep.when == "call" else Category.SETUP,
                                rep.longreprtext.strip().split("\n")[0][:300], rep.longreprtext,
                                phase=rep.when)])
    elif rep.skipped:
        result.when = rep.when
        if hasattr(rep, "wasxfail"):
            result.outcome, result.reason = Outcome.XFAILED, str(rep.wasxfail)
        else:
            result.outcome = Outcome.SKIPPED
            lr = rep.longrepr
            reason = str(lr[2]) if isinstance(lr, tuple) else str(lr)
            result.reason = reason.removeprefix("Skipped: ")
    elif rep.when == "call" and hasattr(rep, "wasxfail"):
        result.outcome, result.reason = Outcome.XPASSED, str(rep.wasxfail)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG[-1] if _CONFIG else None
    if config is None or _is_worker(config):
        return
    results = config.stash[RESULTS]
    merge(results.setdefault(report.nodeid, Result(report.nodeid)), report)


_CONFIG: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG.append(session.config)


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    config = _CONFIG[-1] if _CONFIG else None
    if config is not None and isinstance(excinfo.value, KeyboardInterrupt):
        # harness.cli names the signal; a plain pytest's Ctrl-C is a SIGINT too
        config.stash[INTERRUPT] = str(excinfo.value) or "SIGINT"
        if not config.getoption("fulltrace", False):
            # the terminal shows only where it stopped, but renders every frame first (a
            # second, with paramiko's): the run must stop at once
            excinfo.traceback = excinfo.traceback[-1:]


def pytest_runtest_logstart(nodeid: str) -> None:
    """A record from the start: a test interrupted before its first report still has one."""
    config = _CONFIG[-1] if _CONFIG else None
    if config is not None and not _is_worker(config):
        config.stash[RESULTS].setdefault(nodeid, Result(nodeid))


def mark_interrupted(results: dict[str, Result], nodeids: list[str], why: str) -> None:
    """The records of an interrupted run: a test that started and did not finish (no
    teardown report) is an error saying so; one that never started, a skip saying so."""
    for nodeid in nodeids:
        result = results.get(nodeid)
        if result is None:
            results[nodeid] = Result(nodeid, outcome=Outcome.SKIPPED,
                                     reason=f"not run: the run was interrupted ({why})")
            continue
        if "teardown" in result.durations or result.failed:
            continue  # finished, or a failure already recorded: that verdict stands
        phase = "teardown" if "call" in result.durations else \
            "call" if "setup" in result.durations else "setup"
        title = f"interrupted ({why}) during {phase}"
        result.add([Finding(Category.INFRA, title, title, phase=phase)])
        result.outcome, result.when = Outcome.ERROR, phase
        result.text = f"{title}\n\n{result.text}".rstrip()


def run_options(config: pytest.Config) -> dict[str, Any]:
    """The run's options as a reproducer needs them."""
    out = options.values(config.option)
    out["ksm_seed"] = getattr(config.option, "ksm_seed", None)
    out["args"] = list(config.invocation_params.args)
    out["rootdir"] = str(config.rootpath)
    return out


def cell_meta(config: pytest.Config) -> dict[str, Any]:
    """Which cell (kernel x topology) and shard this run is, for `ksm-harness merge`."""
    opts = options.values(config.option)
    shard = config.getoption("shard", None)
    plan_file = config.getoption("cell_plan", None)
    try:
        plan = cellplan.read_plan(Path(plan_file)) if plan_file else None
        return cellplan.meta(cellplan.Cell(opts["kernel"], opts["numa"]), plan,
                          cellplan.parse_shard(shard) if shard else None,
                          config.stash.get(SELECTED, None))
    except (HarnessError, OSError, ValueError) as exc:
        return {"error": str(exc)}


def _write(path: Path, text: str) -> None:
    files.replace_text(path, text)


class Reports:
    """The report files of a run, each written whole or not at all (harness.results.files).
    A file system that refuses one (full, read-only, no permission) costs one line naming
    its directory, and the results go where they fit: a run directory, else stdout."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.refused: list[Path] = []

    def write(self, path: Path, write: Callable[[], object]) -> None:
        try:
            write()
        except OSError as exc:
            self.refused.append(path)
            why = exc.strerror or str(exc)
            self._say(f"ksm-harness: cannot write {path.name} in {path.parent}: {why}",
                      sys.stderr)

    def rescue(self, doc: dict[str, Any]) -> None:
        """After a refusal: the results document where it fits."""
        if not self.refused:
            return
        text = json.dumps(doc, indent=1) + "\n"
        try:
            out = paths.new_run_dir("results") / "results.json"
            files.replace_text(out, text)
            self._say(f"ksm-harness: the results are in {out}", sys.stderr)
        except OSError:
            self._say(text, sys.stdout)

    def _say(self, text: str, stream: Any) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is None:
            print(text, file=stream, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(text, file=stream, flush=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM while the reports are written take effect once they are: an
    interrupt there would leave none, and the writing takes a moment."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if held:
            os.kill(os.getpid(), held[0])  # now: the run ends as interrupted, reports kept


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    with _signals_held():
        _finish(session)


def _finish(session: pytest.Session) -> None:
    config = session.config
    if config in _CONFIG:
        _CONFIG.remove(config)
    if _is_worker(config):
        return
    faultpoints.reached("report-writing")
    if INTERRUPT in config.stash:
        mark_interrupted(config.stash[RESULTS], [i.nodeid for i in session.items],
                         config.stash[INTERRUPT])
    results = list(config.stash.get(RESULTS, {}).values())
    started = config.stash[STARTED]
    meta: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration": round(time.time() - started, 3),
            "options": run_options(config),
            "exitstatus": int(session.exitstatus),
            "host": socket.gethostname(), "harness_version": harness_version(),
            "cell": cell_meta(config), "kernel": config.stash.get(KERNEL, {})}
    doc = results_document(results, meta)
    xml = getattr(config.option, "xmlpath", None)
    reports = Reports(config)
    if xml:
        reports.write(Path(xml), lambda: junit.write(Path(xml), [junit.Suite("ksm-harness",
                                                                           results)], started))
        if PYTEST_JUNIT in config.stash and not reports.refused:
            plugin, logfile = config.stash[PYTEST_JUNIT]
            plugin.logfile = logfile  # its "generated xml file" line names ours
    run = writers.Run(results, doc)
    for w in writers.WRITERS:
        path = config.getoption(w.name, None)
        if path:
            reports.write(Path(path), functools.partial(w.write, Path(path), run))
    jpath = config.getoption("results_json")
    rdir = config.getoption("report_dir")
    if rdir or any("kernel_release" in r.properties for r in results):
        out = Path(rdir or "results")
        reports.write(out / "results.json",
                      lambda: _write(out / "results.json", json.dumps(doc, indent=1) + "\n"))
        if not reports.refused:
            reports.write(out / "failures", lambda: reproducer.write_failures(
                out, results, meta["options"], paths.REPO))
            reports.write(out / "summary.html", lambda: html.write(
                out, doc, results, junit=Path(xml) if xml else None,
                results_json=Path(jpath) if jpath else None))
    reports.rescue(doc)
