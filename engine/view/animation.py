"""An optimisation's frames, kept for an animated export (GIF or MP4).

The GUI shows only the newest frame, so the record is kept by the method itself, bounded
in count and size: a 2,000-step run at 2,000 px must not hold gigabytes of pictures.
When the record is full every other frame is dropped and the keeping interval doubles,
so what remains always spans the whole run evenly.

``write_animation`` turns such a record into an animated GIF (Pillow) or an MP4 (ffmpeg,
through the package imageio-ffmpeg, which ships the binary).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from engine.core.errors import ConvScopeError
from engine.data.images import write_together


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


class AnimationExportError(ConvScopeError, ValueError):
    """The frames cannot be written as an animation (none, mixed sizes, unknown format)."""


ANIMATION_SUFFIXES = (".gif", ".mp4")


def write_animation(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10.0, *,
                    overwrite: bool = False) -> Path:
    """Write frames (HxWx3 uint8, all one size, oldest first) as an animated GIF or an MP4.

    The format follows the suffix. The file is written through a temporary sibling
    (``write_together``): an interrupted export leaves nothing under ``path``, and an
    existing file is replaced only with ``overwrite``. MP4 needs the package
    imageio-ffmpeg, which ships ffmpeg.
    """
    return write_together([animation_file(frames, path, fps)], overwrite=overwrite)[0]


def check_animation_path(path: str | os.PathLike) -> Path:
    """``path`` if its suffix names a format we write; AnimationExportError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        raise AnimationExportError(f"{path.name}: an animation is written as .gif or .mp4, not '{path.suffix or 'no suffix'}'")
    return path


def animation_file(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float) -> tuple[Path, object]:
    """The animation as a ``(path, write)`` pair for ``write_together``; bad frames, a bad
    frame rate or an unknown suffix fail here, before anything is written."""
    path = check_animation_path(path)
    if not fps > 0 or not np.isfinite(fps):
        raise AnimationExportError(f"the frame rate must be a positive number of frames per second, not {fps}")
    frames = _checked_frames(frames)
    if path.suffix.lower() == ".gif":
        return path, _gif_writer(frames, fps)
    return path, _mp4_writer(frames, fps)


def _checked_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    frames = [np.asarray(frame) for frame in frames]
    if not frames:
        raise AnimationExportError("there are no frames to export: only optimisation methods (dream, class-viz, ...) "
                                   "record their steps; run one first")
    first = frames[0].shape
    for index, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise AnimationExportError(f"frame {index} is not an HxWx3 uint8 picture (shape {frame.shape}, {frame.dtype})")
        if frame.shape != first:
            raise AnimationExportError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is "
                                       f"{first[1]}x{first[0]}; an animation's frames must share one size")
    return frames


def _gif_writer(frames: list[np.ndarray], fps: float):
    # One palette for the whole animation, built from a sample of its frames: a palette per
    # frame would make still regions flicker from frame to frame.
    sample = frames[:: max(1, len(frames) // 16)]
    palette = Image.fromarray(np.concatenate(sample, axis=0)).quantize(256, method=Image.Quantize.MEDIANCUT)
    pictures = [Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for frame in frames]
    # GIF delays are in hundredths of a second; Pillow takes milliseconds.
    duration = max(20, round(100 / fps) * 10)

    def write(handle) -> None:
        # optimize=False keeps every frame whole; Pillow still merges a frame identical to the
        # one before it into a longer delay, which shows the same.
        pictures[0].save(handle, format="GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0,
                         optimize=False, disposal=1)

    return write


def _mp4_writer(frames: list[np.ndarray], fps: float):
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise AnimationExportError("MP4 export needs the package imageio-ffmpeg (pip install imageio-ffmpeg), "
                                   "which brings its own ffmpeg; GIF export works without it") from None
    # H.264 in yuv420p (what every player reads) needs even sides: repeat the last row or column.
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))

    def write(handle) -> None:
        with tempfile.TemporaryDirectory(prefix="convscope-mp4-") as folder:
            encoded = Path(folder) / "animation.mp4"
            writer = imageio_ffmpeg.write_frames(str(encoded), (width + width % 2, height + height % 2), fps=fps,
                                                 codec="libx264", pix_fmt_out="yuv420p", quality=8, macro_block_size=1,
                                                 ffmpeg_log_level="error")
            writer.send(None)  # start ffmpeg
            try:
                for frame in frames:
                    writer.send(np.ascontiguousarray(np.pad(frame, pad, mode="edge")))
            finally:
                writer.close()
            with open(encoded, "rb") as source:
                shutil.copyfileobj(source, handle)

    return write
