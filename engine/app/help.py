"""The methods' help, as shipped with the application (``methods_help.md`` beside this file).

The window's Help > Methods shows one section per method; F1 opens it on the current
panel's method. The text is package data (pyproject.toml's ``package-data``), so an
installed ConvScope has it without the source tree. Qt-free and torch-free (the window
can show help before the engine has loaded): the dialog renders the markdown, this only
reads and splits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HELP_FILE = Path(__file__).with_name("methods_help.md")


@dataclass(frozen=True)
class MethodHelp:
    method_id: str
    title: str
    markdown: str  # the section's body: what it is, its paper, what to look for

    def page(self) -> str:
        """The markdown the help pane shows: the title as a heading, then the section."""
        return f"# {self.title}\n\n{self.markdown}"


@lru_cache(maxsize=1)
def method_help() -> dict[str, MethodHelp]:
    """Each method's help, keyed by method id, in the file's order (a "## id — Title"
    heading starts a section)."""
    sections: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for line in HELP_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            method_id, _dash, title = line[3:].partition(" — ")
            current = []
            sections[method_id.strip()] = (title.strip() or method_id.strip(), current)
        elif current is not None:
            current.append(line)
    return {method_id: MethodHelp(method_id, title, "\n".join(lines).strip() + "\n")
            for method_id, (title, lines) in sections.items()}
