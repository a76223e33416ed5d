"""Where ConvScope keeps what it can recompute: feature stores, rendered built-in datasets.

``CONVSCOPE_CACHE`` overrides the location (tests point it at a temporary folder);
otherwise it follows the XDG convention, ``$XDG_CACHE_HOME/convscope``, which is
``~/.cache/convscope`` on most systems. Everything under it may be deleted at any time:
it is rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root (not created here; writers create the subfolders they need)."""
    override = os.environ.get("CONVSCOPE_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "convscope"
