"""Process-wide settings that must be made before the heavy imports and threads start.

Call ``configure_process()`` first thing in every entry point (the window, the CLI, the
test suite, the benchmarks): it imports nothing heavy itself.
"""

from __future__ import annotations

import os


def configure_process() -> None:
    # NumPy's OpenBLAS threads keep spinning after a matrix product and then compete with
    # torch's threads for the 2 cores: measured, the next forwards ran 2.5x slower. Our
    # NumPy work is small; torch does the heavy arithmetic. Effective only before NumPy is
    # imported, and a user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # glibc keeps freed memory for reuse instead of page-faulting fresh memory on every
    # batch; must happen before the engine thread allocates (see engine/memory.py).
    from engine.core.memory import keep_freed_memory

    keep_freed_memory()
