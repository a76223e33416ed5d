"""An optimisation's frames, kept for an animated export (GIF or MP4).

The GUI shows only the newest frame, so the record is kept by the method itself, bounded
in count and size: a 2,000-step run at 2,000 px must not hold gigabytes of pictures.
When the record is full every other frame is dropped and the keeping interval doubles,
so what remains always spans the whole run evenly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


class FrameRecorder:
    def __init__(self, max_frames: int = 120, max_side: int = 512) -> None:
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.max_frames = max_frames
        self.max_side = max_side
        self.frames: list[np.ndarray] = []
        self._every = 1
        self._seen = 0

    def add(self, rgb: np.ndarray) -> None:
        """Offer a frame (HxWx3 uint8); it is kept if it falls on the current interval."""
        keep = self._seen % self._every == 0
        self._seen += 1
        if not keep:
            return
        self.frames.append(self._shrink(rgb))
        if len(self.frames) >= self.max_frames:
            self.frames = self.frames[::2]
            self._every *= 2

    def finish(self, rgb: np.ndarray | None = None) -> list[np.ndarray]:
        """The record, ending on ``rgb`` (the final picture) when given."""
        if rgb is not None:
            last = self._shrink(rgb)
            if not self.frames or not np.array_equal(self.frames[-1], last):
                self.frames.append(last)
        return self.frames

    def _shrink(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        scale = self.max_side / max(height, width)
        if scale >= 1:
            return np.ascontiguousarray(rgb, dtype=np.uint8)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(np.asarray(rgb, dtype=np.uint8)).resize(size, Image.Resampling.BILINEAR))
