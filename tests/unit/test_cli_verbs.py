"""The verb table: every handler named by a string resolves (mypy cannot see into the
strings), and every verb has a help line."""
from __future__ import annotations

import pytest

from harness import cli


@pytest.mark.parametrize("name", sorted(cli.VERBS))
def test_every_verb_resolves_to_a_function(name: str) -> None:
    verb = cli.VERBS[name]
    assert callable(cli.handler(verb)), verb.run
    assert verb.help and "\n" not in verb.help
