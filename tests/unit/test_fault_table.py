"""The README's fault table is the fault matrix (tests/faults/matrix.py) as its generator
prints it, not prose written beside it: any cell that changes in the data must change there."""
from __future__ import annotations

from harness.faultpoints import PHASES
from tests.faults import matrix
from tests.helpers import REPO

README = REPO / "README.md"


def readme_table(text: str) -> str:
    """The README's lines from the table's header row to the table's end."""
    lines = text.splitlines()
    start = [i for i, ln in enumerate(lines) if ln.startswith(f"| {matrix.HEADER} |")]
    assert len(start) == 1, "README.md must hold the fault table once"
    end = start[0]
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start[0]:end]) + "\n"


def test_the_readme_table_is_the_generated_one() -> None:
    assert readme_table(README.read_text()) == matrix.markdown(), (
        "README.md's fault table differs from the matrix: paste `python -m "
        "tests.faults.matrix` over it")


def test_the_table_has_every_fault_and_phase() -> None:
    table = matrix.markdown()
    assert all(f"| {p} |" in table or f" {p} |" in table for p in PHASES)
    assert all(label in table for label in matrix.FAULTS.values())
    assert len(matrix.CELLS) == len(matrix.FAULTS) * len(PHASES)
    assert len({c.id for c in matrix.CELLS}) == len(matrix.CELLS)


def test_every_cell_is_run_or_says_why_not() -> None:
    for c in matrix.CELLS:
        assert c.skip or (c.status is not None and c.says), c.id
        assert not c.skip or c.tag, c.id


def test_a_changed_cell_would_be_caught() -> None:
    table = matrix.markdown()
    wrong = table.replace("| 130 ", "| 131 ", 1) if "| 130 " in table else table + "|x|\n"
    text = f"intro\n{wrong}\nafter\n"
    assert readme_table(text) == wrong != table
