"""`python -m bench [NAME ...]`: every benchmark (or the named ones), one table, with versions.

A benchmark is any module here with a ``run() -> list[Row]``, except the parts of one
(``_name``, imported by the benchmark they belong to); first_paint goes first because it
measures a cold start.
"""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
from pathlib import Path

from engine.core.runtime import configure_process

configure_process()

import numpy  # noqa: E402 - after the process settings
import torch  # noqa: E402

from bench.common import print_table  # noqa: E402

NOT_BENCHMARKS = {"common", "__main__"}


def benchmark_names() -> list[str]:
    names = [info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
             if info.name not in NOT_BENCHMARKS and not info.name.startswith("_")]
    return sorted(names, key=lambda name: (name != "first_paint", name))


def main(argv: list[str]) -> None:
    names = argv or benchmark_names()
    unknown = set(names) - set(benchmark_names())
    if unknown:
        sys.exit(f"no benchmark {', '.join(sorted(unknown))}; there are: {', '.join(benchmark_names())}")
    rows = []
    for name in names:
        rows += importlib.import_module(f"bench.{name}").run()
    print(f"ConvScope benchmarks — python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {numpy.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    try:
        import captum

        print(f"reference: captum {captum.__version__}")
    except ImportError:
        pass
    print_table(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
