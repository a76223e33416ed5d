"""`python -m bench`: every benchmark, one table, with the versions measured."""

from __future__ import annotations

import platform

from engine.runtime import configure_process

configure_process()

import numpy  # noqa: E402 - after the process settings
import torch  # noqa: E402

from . import dataset_speed, embed_speed, engine_speed, first_paint, gui_speed, occlusion_speed  # noqa: E402
from .common import print_table  # noqa: E402


def main() -> None:
    rows = (first_paint.run() + engine_speed.run() + dataset_speed.run() + embed_speed.run() + gui_speed.run()
            + occlusion_speed.run())
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
