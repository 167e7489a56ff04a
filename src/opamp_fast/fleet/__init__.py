"""The fleet: what the server knows and decides about agents, on the OpAMP path.

- ``handler``: ``FleetHandler``, the ``AgentHandler`` the transports call (owner, takeover and
  duplicate connections, re-keying, liveness, what is persisted and announced);
- ``registry``: live agents in memory (uid -> record, the heartbeat timing wheel);
- ``admission``: who may connect, as whom, and when the server says "not now";
- ``events``: the fleet's events for the console and ``/api/events``;
- ``cluster``: leases, lost instances and commands across instances sharing one Postgres;
- ``reasons``: why a session ended (history rows, close codes).

Imports point down only: the protocol core, the transport seam (``transport.handlers``) and
``storage``; never ``api`` or ``services``.
"""
