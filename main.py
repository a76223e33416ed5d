"""ConvScope: `python main.py [IMAGE]` opens the window; `python main.py COMMAND ...` is the CLI."""

import sys


def main(argv: list[str] | None = None) -> int:
    from engine.core.runtime import configure_process

    configure_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    # engine.app.cli.COMMANDS, written out: importing the CLI imports torch, which the window loads later.
    if argv and argv[0] in ("models", "layers", "classify", "run", "evaluate", "extract"):
        from engine.app.cli import main as cli_main

        return cli_main(argv)
    # The window module imports only Qt: torch is loaded after the window is on screen.
    from gui.app import main as gui_main

    return gui_main(argv)


if __name__ == "__main__":
    sys.exit(main())
