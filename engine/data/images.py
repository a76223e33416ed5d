"""Reading images from disk safely, and writing results atomically.

Everything that reaches a method is a plain 8-bit RGB ``PIL.Image``: odd modes (CMYK,
16-bit, palette, alpha, 1-bit) are converted here, once, and EXIF orientation is applied
so the picture is upright as the user's photo viewer shows it. Files that are not images,
are empty or truncated, or would decompress into an enormous pixel buffer are refused
with a message that says which.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.core.errors import ImageLoadError
from engine.core.part_files import create_part_file, remove_stale_parts

# A decoded image larger than this is refused before any pixel is decoded: at 4 bytes a
# pixel it would already need gigabytes. 120 MP still admits medium-format photos.
MAX_PIXELS = 120_000_000
# Images are scaled down to this longest side when loaded: every method works at the
# model's input size or a few times it, and a 100 MP array would only cost memory.
MAX_SIDE = 4096

# zlib's level for the PNGs we write. Pillow's default, 6, took 113 ms for an exported
# 819 x 536 figure (a map over a photo, colour bar, caption), most of a folder run's time
# a photo; 4 took 41 ms for a file 0.6% larger (332 against 334 KB; level 1: 24 ms, 15% larger).
PNG_COMPRESSION = 4

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, 8-bit, upright
    path: str = ""
    original_size: tuple[int, int] = (0, 0)  # (width, height) on disk, after EXIF rotation
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def to_array(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.uint8)


def load_image(path: str | os.PathLike, max_side: int | None = None) -> LoadedImage:
    # MAX_SIDE is looked up per call, not frozen into the signature, so that settings
    # (and tests) can change it.
    max_side = MAX_SIDE if max_side is None else max_side
    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageLoadError(f"{name}: no such file ({path})")
    if path.is_dir():
        raise ImageLoadError(f"{name} is a folder, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{name} is empty (0 bytes), so it holds no image")
    except OSError as exc:
        raise ImageLoadError(f"{name} cannot be read: {exc.strerror or exc}") from None

    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we decide ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageLoadError(_too_large_message(name, width * height, f"{width}x{height} pixels"))
                if getattr(img, "n_frames", 1) > 1:
                    notes.append(f"{name} has {img.n_frames} frames; showing the first")
                if img.format == "JPEG" and max(width, height) > max_side:
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less memory and time.
                    scale = max(width, height) / max_side
                    img.draft("RGB", (int(width / scale), int(height / scale)))
                img.load()
                decoded_size = img.size  # smaller than width x height if draft() scaled
                upright = ImageOps.exif_transpose(img)
                turned = upright.size != decoded_size
                original_size = (height, width) if turned else (width, height)
                rgb = _to_rgb(upright)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name} is not an image file that ConvScope can read") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses images over twice its own limit inside Image.open, before our
        # check sees the size; its message is the only place the pixel count is given.
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        if counted:
            raise ImageLoadError(_too_large_message(name, int(counted.group(1)))) from None
        raise ImageLoadError(
            f"{name} would decompress to an enormous image, so it was not opened (a "
            "'decompression bomb'). Scale it down in an image editor first."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            # The operating system refused (permissions, I/O error), not the decoder.
            raise ImageLoadError(f"{name} cannot be read: {exc.strerror or exc}") from None
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "unrecognized data stream" in text:
            raise ImageLoadError(f"{name} is truncated or damaged: the file ends before the image does") from None
        raise ImageLoadError(f"{name} could not be decoded: {text}") from None

    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        new_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
    # Compared with the size on disk, not the decoded one: a JPEG draft may already have
    # done all the scaling.
    if rgb.size != original_size:
        notes.append(f"scaled from {original_size[0]}x{original_size[1]} to {rgb.width}x{rgb.height}")
    return LoadedImage(image=rgb, path=str(path), original_size=original_size, notes=notes)


def _too_large_message(name: str, pixels: int, dimensions: str = "") -> str:
    size = f"{dimensions} ({pixels / 1e6:.0f} MP)" if dimensions else f"{pixels / 1e6:.0f} MP ({pixels} pixels)"
    return (
        f"{name} is {size}; ConvScope opens images up to {MAX_PIXELS / 1e6:.0f} MP. "
        "Scale it down in an image editor first."
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Deep grayscale: rescale to 8 bits instead of letting convert() clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.clip((arr - lo) / max(hi - lo, 1e-12), 0, 1)
        gray = (scaled * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_from_array(array: np.ndarray) -> Image.Image:
    """uint8 HxWx3 (or HxW) array to an RGB image."""
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def write_atomically(path: str | os.PathLike, write, *, overwrite: bool = False) -> Path:
    """Write a file through a temporary sibling and rename it into place.

    A crash or a full disk never leaves half a file under the final name, and an existing
    file is only replaced when the caller says so (after asking the user).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path.parent, path.name)  # what a killed earlier write of this file left
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def write_together(files, *, overwrite: bool = False) -> list[Path]:
    """Write several files so that either all of them are new or all are as they were.

    ``files`` is a sequence of ``(path, write)`` pairs; ``write(handle)`` writes one file's
    bytes. Every file is first written in full to a temporary sibling, so a full disk or a
    failing writer changes nothing under the final names. Then the files are moved into
    place one by one, each existing one kept under a hidden name until all are in: if a
    move fails, those already moved are put back. (Only a kill in the microseconds between
    two moves can leave a mix.) A picture and its sidecar are written this way, so the new
    PNG never sits beside the old run's JSON.

    Raises what ``check_targets`` raises before anything is written; any later OSError
    carries in ``filename`` the target it was writing, not a temporary name.
    """
    targets = check_targets([path for path, _write in files], overwrite=overwrite)
    staged: list[Path] = []
    try:
        for target, (_path, write) in zip(targets, files):
            with _failing_as(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                staged.append(_stage(target, write))
        _move_into_place(targets, staged)
    finally:
        for tmp in staged:
            _remove_quietly(tmp)
    return targets


@contextlib.contextmanager
def _failing_as(target: Path):
    """An OSError inside names ``target``, not the temporary file it happened on."""
    try:
        yield
    except OSError as exc:
        exc.filename = str(target)
        raise


def check_targets(paths, *, overwrite: bool = False) -> list[Path]:
    """The paths, if files can be written there; the OSError a write would meet otherwise.

    Checked: no name twice, no folder under a file's name, no file where a parent folder
    should be, and (unless ``overwrite``) no file that exists already. Cheap, so a long
    job can check its outputs before it starts.
    """
    targets = [Path(path) for path in paths]
    if len(set(targets)) != len(targets):
        raise ValueError("the same file is named twice: " + ", ".join(str(t) for t in targets))
    for target in targets:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
        blocking = _file_among_parents(target)
        if blocking is not None:
            raise NotADirectoryError(errno.ENOTDIR, f"{blocking} is a file, not a folder", str(target))
        if target.exists() and not overwrite:
            raise FileExistsError(errno.EEXIST, "already exists", str(target))
    return targets


def _stage(target: Path, write) -> Path:
    """``write`` into a temporary sibling of ``target``, flushed to the disk; its path."""
    fd, tmp = _create_temporary_sibling(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _move_into_place(targets: list[Path], staged: list[Path]) -> None:
    moved: list[tuple[Path, Path | None]] = []  # each target moved so far, and where its old file waits
    try:
        for target, tmp in zip(targets, staged):
            with _failing_as(target):
                kept = _keep_old(target) if target.exists() else None
                moved.append((target, kept))
                os.replace(tmp, target)
    except BaseException:
        for target, kept in reversed(moved):
            try:
                if kept is None:
                    target.unlink(missing_ok=True)
                elif target.exists() and os.path.samefile(kept, target):
                    os.unlink(kept)  # its move never happened (renaming a link onto itself would do nothing)
                else:
                    os.replace(kept, target)
            except OSError:
                pass  # the error being raised says what went wrong; nothing better to do here
        raise
    for _target, kept in moved:
        if kept is not None:
            _remove_quietly(kept)


def _keep_old(target: Path) -> Path:
    """A hidden second name for ``target``'s current file, so it can be put back."""
    while True:
        kept = target.with_name(f".{target.name}.{secrets.token_hex(4)}.replaced")
        try:
            os.link(target, kept)  # the file stays in place: no moment without it
            return kept
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: move it aside instead
            os.replace(target, kept)
            return kept


def _file_among_parents(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (a file in the way)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _create_temporary_sibling(path: Path) -> tuple[int, Path]:
    """Open a new, uniquely named ``.part`` file next to ``path`` for writing, locked while
    open so that no other process takes it for the leftover of a killed one
    (``engine.core.part_files``).

    Created with mode 0o666 so the umask applies and the final file gets the permissions
    any new file of the user's would; tempfile.mkstemp would leave it private (0o600).
    """
    return create_part_file(path)


def write_png(handle, image: Image.Image) -> None:
    """``image`` as PNG into ``handle`` (an open binary file, or a path), at zlib level ``PNG_COMPRESSION``."""
    image.save(handle, format="PNG", compress_level=PNG_COMPRESSION)


def save_png(path: str | os.PathLike, rgb: np.ndarray, *, overwrite: bool = False) -> Path:
    image = image_from_array(rgb)
    return write_atomically(path, lambda fh: write_png(fh, image), overwrite=overwrite)
