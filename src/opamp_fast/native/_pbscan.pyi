"""Type stub for the compiled :mod:`opamp_fast.native._pbscan` (mirrors ``_pbscan_py``)."""

__all__ = ["parse_heartbeat"]

def parse_heartbeat(data: bytes, start: int = 0) -> tuple[bytes, int, int] | None: ...
