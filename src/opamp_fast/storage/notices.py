"""Notices between instances over Postgres LISTEN/NOTIFY: channel names and payloads.

Every instance listens on its own channel (``opamp_fast_<digest of its id>``: ids may be longer
than a channel name may be) and on the fleet-wide one. A notice is a small JSON object
``{"kind": ..., "from": <instance>, ...}``; one that lists agents is split so that every
payload stays under Postgres's 8,000-byte limit. Fleet events travel the same way, already
encoded (``encode_event_notices``). Notices are sent inside the transaction whose
changes they announce, so they arrive exactly when those changes are visible, or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

__all__ = [
    "FLEET_CHANNEL",
    "channel_for",
    "encode_event_notices",
    "encode_notices",
    "event_notice_prefix",
]

FLEET_CHANNEL: Final = "opamp_fast_fleet"
_MAX_PAYLOAD: Final = 7000  # Postgres allows < 8000 bytes; leave room for the envelope
_UIDS_PER_NOTICE: Final = _MAX_PAYLOAD // 36  # 32 hex digits, quotes and a comma each


def channel_for(instance_id: str) -> str:
    """The LISTEN channel of one instance (a valid identifier, at most 63 bytes)."""
    return "opamp_fast_" + hashlib.sha256(instance_id.encode()).hexdigest()[:40]


def encode_notices(
    kind: str, sender: str, *, uids: Sequence[str] = (), **fields: Any
) -> Iterator[str]:
    """The JSON payloads of one notice, split by ``uids`` (hex) when they are many."""
    if not uids:
        yield json.dumps({"kind": kind, "from": sender, **fields}, separators=(",", ":"))
        return
    for start in range(0, len(uids), _UIDS_PER_NOTICE):
        chunk = list(uids[start : start + _UIDS_PER_NOTICE])
        yield json.dumps(
            {"kind": kind, "from": sender, "uids": chunk, **fields}, separators=(",", ":")
        )


def event_notice_prefix(sender: str) -> str:
    """How every events notice of ``sender`` starts: its own listener skips them unparsed."""
    return '{"kind":"events","from":' + json.dumps(sender) + ","


def encode_event_notices(sender: str, events: Iterable[bytes]) -> Iterator[str]:
    """The notice payloads (``{"kind": "events", ...}``) that carry ``events`` (encoded event
    objects) to the other instances, each under Postgres's 8,000-byte limit."""
    head = event_notice_prefix(sender) + '"events":['
    chunk: list[str] = []
    size = len(head) + 2
    for raw in events:
        text = raw.decode("utf-8")
        if len(text.encode()) + len(head) + 2 > _MAX_PAYLOAD:
            continue  # cannot happen with clipped data; never send an oversized notice
        if chunk and size + len(text.encode()) + 1 > _MAX_PAYLOAD:
            yield head + ",".join(chunk) + "]}"
            chunk, size = [], len(head) + 2
        chunk.append(text)
        size += len(text.encode()) + 1
    if chunk:
        yield head + ",".join(chunk) + "]}"
