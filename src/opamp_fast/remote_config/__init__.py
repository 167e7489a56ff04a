"""Remote configuration: configs stored and versioned, assigned to agents, rolled out.

- ``model``: the pure domain (input checks, label selectors, precedence of pins and groups,
  the rollout decision), below ``storage`` (whose queries use it);
- ``service``: one in-memory directory per instance, kept current from Postgres, consulted on
  the OpAMP path without a database round trip, and the rollout driver; above ``storage``.

This package imports neither module at import time, so ``storage`` can use the model.
"""
