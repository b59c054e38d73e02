"""The daemon: the I/O shell around the pure :class:`~meshd.core.Core`.

:mod:`meshd.daemon.node` (lifecycle and the one effect interpreter) wires the parts, each
of which takes narrow ports, never the node: :mod:`~meshd.daemon.commit` (durable before
acknowledged), :mod:`~meshd.daemon.runner` (local skill runs),
:mod:`~meshd.daemon.packs` (skill packs, trust, the mesh catalog),
:mod:`~meshd.daemon.delegation` (delegate and task requests), :mod:`~meshd.daemon.events`
(events, long-polls, audit), :mod:`~meshd.daemon.control` (the control op table),
:mod:`~meshd.daemon.admission` (proofs and refusals), :mod:`~meshd.daemon.metrics`
(figures) and :mod:`~meshd.daemon.state` (identity and mesh key at start).
"""
