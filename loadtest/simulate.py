"""Thin wrapper: ``python loadtest/simulate.py --agents 1000 --duration-s 60 ...``.

Same flags and JSON summary as ``opamp-fast simulate``; the implementation lives in
``opamp_fast.sim`` so the CLI, these scripts and the tests run one code path.
"""

from __future__ import annotations

import sys

from opamp_fast.sim import main

if __name__ == "__main__":
    sys.exit(main())
