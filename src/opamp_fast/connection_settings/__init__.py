"""Connection settings offered to agents: their OpAMP connection, their own telemetry, and
client certificates signed from their CSRs.

- ``model``: the pure domain (operator input, masking, precedence, the offer's parts);
- ``ca``: the agent CA (CSR checks, signing, rotation keys), pure apart from reading its files;
- ``service``: the per-group and per-agent offers held in memory, the CSR and rotation queue
  (signing in worker threads), the reported statuses written in batches; above ``fleet``.

This package imports no module at import time, so ``storage`` can use the model.
"""
