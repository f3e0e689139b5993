"""Generated operation sequences checked against a model: ``content`` (what a page holds),
``model`` (steps, preconditions, what every page must hold), ``invariants`` (KSM counters,
pure), ``executor`` (steps and oracles on a guest), ``machine`` (the hypothesis generator),
``replay`` (the reproducer file)."""
