"""How the user has the canvas draw a map: its colormap and the overlay's opacity.

The canvas reads them from its controls; the session applies them to the exported
picture and records them in the sidecar. Kept apart from the session, which imports
torch, so the window can build one before the engine has loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_OPACITY = 0.6


@dataclass(frozen=True)
class ViewSettings:
    colormap: Optional[str] = None  # None: the display's own
    overlay_opacity: float = DEFAULT_OPACITY
