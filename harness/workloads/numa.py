"""A workload's NUMA commands: where its pages are, and moving them (move_pages, mbind,
migrate_pages)."""
from __future__ import annotations

from harness.workloads.protocol import MoveResult, NodeCounts, _errno_fields
from harness.workloads.session import Session, range_args


class NumaCommands(Session):
    """Placement of the workload's pages on NUMA nodes."""

    def move(self, name: str, node: int, move_all: bool = False, first: int | None = None,
             count: int | None = None, timeout: float | None = None) -> MoveResult:
        """move_pages(2) the region to ``node`` (MPOL_MF_MOVE_ALL with move_all)."""
        line = f"move {name} {node}" + (" all" if move_all else "") + range_args(first, count)
        f = self.command(line, timeout or self._timeout(count or self._pages(name), 4)).fields
        return MoveResult(int(f["moved"]), int(f["already"]), int(f["failed"]),
                          int(f["unattempted"]), int(f["notmoved"]), _errno_fields(f))

    def nodes(self, name: str, first: int | None = None, count: int | None = None) -> NodeCounts:
        """Where the region's pages are (move_pages with nodes=NULL)."""
        line = f"nodes {name}" + range_args(first, count)
        f = self.command(line, self._timeout(count or self._pages(name))).fields
        return NodeCounts(int(f["node0"]), int(f["node1"]), int(f["other"]), _errno_fields(f))

    def mbind(self, name: str, node: int, move_all: bool = False,
              timeout: float | None = None) -> None:
        """mbind(2) the region to ``node`` (MPOL_BIND) with MPOL_MF_MOVE (|MOVE_ALL); where
        the pages went is for :meth:`nodes` to say."""
        self.command(f"mbind {name} {node}" + (" all" if move_all else ""),
                     timeout or self._timeout(self._pages(name), 4))

    def policy(self, name: str) -> tuple[str, list[int]]:
        f = self.command(f"policy {name}").fields
        return f["mode"], [int(n) for n in f.get("nodes", "").split(",") if n]

    def migrate(self, from_node: int, to_node: int, timeout: float | None = None) -> int:
        """migrate_pages(2) of the whole process; returns pages not moved."""
        reply = self.command(f"migrate {from_node} {to_node}",
                             timeout or self._timeout(self._pages(None), 4))
        return reply.number("notmoved")
