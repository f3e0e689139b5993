"""A generated failure as a file: the (shrunk) list of steps, the seed and the kernel, which
``ksm-harness fuzz --replay FILE`` runs again step by step."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fuzz.model import Step

FORMAT = "ksm-harness-fuzz-1"


@dataclass(frozen=True)
class Reproducer:
    steps: tuple[Step, ...]
    seed: int | None
    kernel: str
    failure: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "kernel": self.kernel, "seed": self.seed,
                "failure": self.failure, "steps": [s.to_json() for s in self.steps]}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def parse(data: Any, where: str = "reproducer") -> Reproducer:
    """A reproducer from its JSON form; HarnessError naming what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HarnessError(f"{where}: not a {FORMAT} file (no \"format\": \"{FORMAT}\")")
    if not isinstance(data.get("steps"), list) or not data["steps"]:
        raise HarnessError(f"{where}: \"steps\" must be a non-empty list")
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise HarnessError(f"{where}: \"seed\" must be an integer or null")
    try:
        steps = tuple(Step.from_json(s) for s in data["steps"])
    except ValueError as e:
        raise HarnessError(f"{where}: {e}") from None
    return Reproducer(steps, seed, str(data.get("kernel", "")), str(data.get("failure", "")))


def load(path: Path) -> Reproducer:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise HarnessError(f"cannot read reproducer {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise HarnessError(f"{path}: not JSON: {e}") from None
    return parse(data, str(path))
