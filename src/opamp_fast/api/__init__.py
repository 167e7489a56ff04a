"""HTTP surface besides OpAMP: health probes, REST API, metrics (Starlette)."""
