"""`python -m bench`: every benchmark, one table, with the versions measured."""

from __future__ import annotations

import platform

import numpy
import torch

from . import engine_speed, first_paint, gui_speed
from .common import print_table


def main() -> None:
    rows = first_paint.run() + engine_speed.run() + gui_speed.run()
    print(f"ConvScope benchmarks — python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {numpy.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    try:
        import captum

        print(f"reference: captum {captum.__version__}")
    except ImportError:
        pass
    print_table(rows)


if __name__ == "__main__":
    main()
