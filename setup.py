"""Builds only the Cython extensions; all metadata lives in pyproject.toml.

Switches (read at build time):
  OPAMP_FAST_CYTHON_TRACE=1     compile with line tracing (profiling, coverage)
  OPAMP_FAST_CYTHON_ANNOTATE=1  write the HTML annotation next to the .pyx
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("OPAMP_FAST_CYTHON_TRACE") == "1"
ANNOTATE = os.environ.get("OPAMP_FAST_CYTHON_ANNOTATE") == "1"

directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "linetrace": TRACE,
    "profile": TRACE,
}
macros = [("CYTHON_TRACE", "1")] if TRACE else []

extensions = [
    Extension(
        "opamp_fast.native._heartbeat",
        ["src/opamp_fast/native/_heartbeat.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    ),
    Extension(
        "opamp_fast.native._wsframe",
        ["src/opamp_fast/native/_wsframe.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    ),
    Extension(
        "opamp_fast.native._pbscan",
        ["src/opamp_fast/native/_pbscan.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=ANNOTATE))
