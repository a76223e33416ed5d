"""Tooltips that wrap: the window's plain-text tooltips are turned into rich text.

Qt shows a plain-text tooltip on one line, however long (a method's help ran the width
of the screen, its first letter pushed off the edge), so it is turned into rich text
in lines of a readable width. Forms set their help as plain text (the same words the CLI's --help
prints), so rather than every widget marking up its own, the window's widgets are
walked once they are all built. (An application-wide event filter would catch tooltips
set later too, but a Python filter on every event of the application crashes PySide
while it collects wrappers of widgets being deleted.)
"""

from __future__ import annotations

import html
import textwrap

from PySide6.QtGui import Qt
from PySide6.QtWidgets import QWidget


LINE = 70  # characters: about 450 px of the tooltip font, a comfortable line to read


def wrapped(text: str) -> str:
    """``text`` as rich text in lines of at most LINE characters; rich text is left as it is.

    The lines are broken here and each is kept whole (``nobr``): Qt's own wrapping of a
    rich-text tooltip squeezes a short one into a column a few words wide.
    """
    if not text or Qt.mightBeRichText(text):
        return text
    lines = [line for paragraph in text.split("\n") for line in (textwrap.wrap(paragraph, LINE) or [""])]
    return "<qt>" + "<br>".join(f"<nobr>{html.escape(line)}</nobr>" for line in lines) + "</qt>"


def wrap_tooltips(root: QWidget) -> None:
    """Every plain tooltip of ``root`` and the widgets in it, as rich text."""
    for widget in [root, *root.findChildren(QWidget)]:
        text = widget.toolTip()
        if text and not Qt.mightBeRichText(text):
            widget.setToolTip(wrapped(text))
