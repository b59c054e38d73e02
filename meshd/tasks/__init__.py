"""Task delegation: the task model, its lifecycle table, agent choice and the lead's
scheduler. All pure (no I/O, injected ``now``); :mod:`meshd.node` wires them to the mesh."""
