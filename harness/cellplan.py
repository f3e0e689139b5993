"""Cells and shards of a run. A cell is one kernel on one topology (a column of the matrix);
its id is derived from the ``--kernel`` and ``--numa`` arguments (not a counter), so a CI job
that is given the same arguments finds the same cell on any machine. A shard is a contiguous
slice of the run's (cell, test) pairs: ``--shard I/N``, or from the CI's environment
(GitLab's ``CI_NODE_INDEX``/``CI_NODE_TOTAL``, 1-based; a Kubernetes Indexed Job's
``JOB_COMPLETION_INDEX``, 0-based, with the total in ``KSM_HARNESS_SHARDS``).

Everything here is cheap: arguments are checked (paths exist and look like kernels, package
names look right, topologies parse) before the first cell runs, and nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.assets import kernel as kernel_mod
from harness.errors import HarnessError
from harness.machine.topology import Node, canonical_numa, parse_numa
from harness.options import DEFAULT_NUMA

SHARDS_ENV = "KSM_HARNESS_SHARDS"  # a Kubernetes Indexed Job's completions (its shard count)


def _kernel_key(kernel: str | None) -> str:
    """The kernel argument in one spelling: no --kernel, ``debian`` and
    ``debian:linux-image-amd64`` are the same kernel."""
    if not kernel or kernel in ("debian", f"debian:{kernel_mod.DEFAULT_PACKAGE}"):
        return "debian"
    return kernel.rstrip("/") if len(kernel) > 1 else kernel


def _kernel_name(key: str) -> str:
    if key == "debian" or key.startswith("debian:"):
        # debian:unstable -> debian-unstable, debian:bookworm:linux-image-6.12-amd64 ->
        # debian-bookworm-6.12-amd64 (a cell name holds no colon)
        return "-".join(["debian", *(p.removeprefix("linux-image-") for p in key.split(":")[1:])])
    path = Path(key)
    if path.name == "bzImage" and path.parent.name == "boot" and len(path.parents) > 3:
        return path.parents[3].name or "kernel"  # TREE/arch/x86/boot/bzImage
    return path.name or "kernel"


def _numa_name(nodes: tuple[Node, ...]) -> str:
    if all(n == Node() for n in nodes):
        return f"{len(nodes)}node"
    return "-".join(f"{n.mem_mb}m{n.cpus}c" for n in nodes)


def cell_id(kernel: str | None, numa: str | None) -> str:
    """``debian-2node-1a2b3c``: readable name, then a hash of the kernel argument and the
    canonical topology (``2`` and ``1G,1G`` are one topology)."""
    key, topo = _kernel_key(kernel), canonical_numa(numa or DEFAULT_NUMA)
    digest = hashlib.sha256(f"{key}\0{topo}".encode()).hexdigest()[:6]
    name = f"{_kernel_name(key)}-{_numa_name(parse_numa(numa or DEFAULT_NUMA))}".lower()
    name = re.sub(r"[^a-z0-9.]+", "-", name).strip("-.")[:48]
    return f"{name}-{digest}"


@dataclass(frozen=True)
class Cell:
    kernel: str | None
    numa: str | None

    @property
    def id(self) -> str:
        return cell_id(self.kernel, self.numa)

    def describe(self) -> str:
        return f"{self.kernel or 'debian'} on numa {self.numa or DEFAULT_NUMA}"

    def to_dict(self) -> dict[str, Any]:
        # the topology always spelled out: a run without --numa and one with --numa 2
        # describe their cell alike
        return {"id": self.id, "kernel": self.kernel, "numa": self.numa or DEFAULT_NUMA}


def validate(kernels: Iterable[str | None], numas: Iterable[str | None],
             modules: str | None = None) -> None:
    """Every --kernel and --numa, cheaply, before anything runs."""
    for n in numas:
        if n is not None:
            parse_numa(n)
    for k in kernels:
        kernel_mod.check_spec(k, modules)


def plan(kernels: list[str], numas: list[str], modules: str | None = None) -> list[Cell]:
    """Kernel x topology, in the order given; every argument checked first."""
    validate(kernels, numas, modules)
    ks: list[str | None] = [*kernels] or [None]
    ns: list[str | None] = [*numas] or [None]
    cells = [Cell(k, n) for k in ks for n in ns]
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.id in seen:
            raise HarnessError(f"--kernel {c.kernel or 'debian'} --numa {c.numa or DEFAULT_NUMA}"
                               f" is the same cell as {seen[c.id].describe()}: given twice")
        seen[c.id] = c
    return cells


def select(cells: list[Cell], ids: list[str]) -> list[Cell]:
    """The cells named by --cell (in plan order); an unknown id names the known ones."""
    known = {c.id: c for c in cells}
    for i in ids:
        if i not in known:
            raise HarnessError(f"--cell {i}: not a cell of this --kernel/--numa list; its cells "
                               f"are {', '.join(known)} (see `ksm-harness plan`)")
    return [c for c in cells if c.id in ids]


def write_plan(path: Path, cells: list[Cell]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([c.to_dict() for c in cells], indent=1) + "\n")
    return path


def read_plan(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(Path(path).read_text()))


# --- shards ------------------------------------------------------------------------------

SHARD_SYNTAX = "I/N with 1 <= I <= N, e.g. --shard 2/4"


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.total}"

    def block(self, size: int) -> range:
        """This shard's contiguous, balanced part of ``size`` positions."""
        return range((self.index - 1) * size // self.total, self.index * size // self.total)


def parse_shard(text: str, what: str = "--shard") -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise HarnessError(f"{what} {text}: use {SHARD_SYNTAX}")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """GitLab ``parallel: N`` (CI_NODE_INDEX/CI_NODE_TOTAL, 1-based), or a Kubernetes Indexed
    Job (JOB_COMPLETION_INDEX, 0-based; the total in KSM_HARNESS_SHARDS)."""
    if env.get("CI_NODE_INDEX") and env.get("CI_NODE_TOTAL"):
        return parse_shard(f"{env['CI_NODE_INDEX']}/{env['CI_NODE_TOTAL']}",
                           "CI_NODE_INDEX/CI_NODE_TOTAL")
    if env.get("JOB_COMPLETION_INDEX"):
        total = env.get(SHARDS_ENV)
        if not total:
            raise HarnessError(f"JOB_COMPLETION_INDEX is set but {SHARDS_ENV} is not: set it to "
                               "the Job's completions (the number of shards)")
        index = env["JOB_COMPLETION_INDEX"]
        if not index.isdigit():
            raise HarnessError(f"JOB_COMPLETION_INDEX {index}: not a number")
        return parse_shard(f"{int(index) + 1}/{total}", f"JOB_COMPLETION_INDEX+1/{SHARDS_ENV}")
    return None


def position_of(text: str) -> tuple[int, int]:
    """``c/C`` (0-based cell position among C sharded cells)."""
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise HarnessError(f"--cell-position {text}: use c/C with 0 <= c < C")
    return int(m.group(1)), int(m.group(2))


def shard_items(count: int, shard: Shard, position: tuple[int, int]) -> range:
    """Which of a cell's ``count`` tests (after -k/-m) are this shard's: the run's (cell,
    test) pairs are numbered cell by cell, and each shard takes a contiguous block, so a shard
    keeps a module's tests together (one VM boot) and N shards of N equal cells are the
    cells."""
    c, cells = position
    mine = shard.block(cells * count)
    lo, hi = max(mine.start, c * count), min(mine.stop, (c + 1) * count)
    return range(lo - c * count, max(hi - c * count, lo - c * count))


def meta(cell: Cell, plan_cells: list[dict[str, Any]] | None, shard: Shard | None,
         selected: int | None) -> dict[str, Any]:
    """What a results file says about its cell (read by ``merge`` and dashboards)."""
    return {**cell.to_dict(), "plan": plan_cells or [cell.to_dict()],
            "shard": str(shard) if shard else None, "selected": selected}
