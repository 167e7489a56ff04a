"""The three hot loops written in Cython, each with a pure-Python twin that implements the same
pinned semantics and is checked against it (differential tests):

- ``heartbeat``: the timing wheel (heartbeat deadlines, connection deadlines);
- ``wsframe``: server-side WebSocket framing (RFC 6455) and the OpAMP header byte;
- ``pbscan``: recognising a heartbeat ``AgentToServer`` from its bytes, without a decode.

Import the dispatcher modules (``native.heartbeat``, ``native.wsframe``, ``native.pbscan``): each
takes the compiled module when it is built and ``OPAMP_FAST_NO_EXTENSIONS`` is unset, the twin
otherwise (``_select.pick``). Type checkers always see the twin.
"""
