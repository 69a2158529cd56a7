"""KFP components of the polydistill pipeline: one module per stage, each a thin wrapper around one library
function (see ``docs/CONTRACTS.md`` and ``docs/ARCHITECTURE.md``).

Importing this package imports nothing else, so :mod:`polydistill_kfp.components.runtime` (the glue the
component bodies use inside a running step) stays importable without kfp.
"""
