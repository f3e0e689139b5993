"""A kernel's .config as a dict (the kernel's own format: CONFIG_X=value lines)."""
from __future__ import annotations

import re

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")


def parse_config(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        m = _SET.match(line)
        if m:
            config[m.group(1)] = m.group(2).strip('"')
    return config
