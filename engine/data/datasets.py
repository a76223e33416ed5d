"""Datasets: a folder of the user's images (or a built-in set), listed lazily, decoded in the background.

``open_dataset`` lists image files and their sizes and modification times, never their
pixels, so a folder of tens of thousands of photos opens in about a second and costs a
few megabytes. Pixels are read later, batch by batch, by ``iter_batches``: a small
thread pool decodes and resizes the next batches while the model works on the current
one (Pillow and PyTorch release the GIL while they decode and resample). On two
cores the decoding competes with the forward pass for the same CPU, so overlap alone
cannot hide it; it is kept cheap instead: a large JPEG is decoded at reduced scale, the
resize is PyTorch's antialiased bicubic on uint8 (7x faster than Pillow's), and a grey
picture stays one channel until it lands in the batch.

Every dataset image reaches the model as a ``size x size`` square: the whole picture,
stretched (no crop, no padding), so images of any shape batch together. A point or box
in that square maps back to the original picture by scaling each axis on its own,
x by ``width / size`` and y by ``height / size`` (``square_box_to_image``).

Labels come from folder names: when images sit in subfolders of the root, the first
subfolder's name is their label (``root/cat/x.jpg`` and ``root/cat/2020/y.jpg`` are both
"cat"); images directly in the root have no label (None).

A list file (``.txt``, ``.csv``, ``.tsv`` or ``.lst``) names the images instead: one path
a line, relative to the list's folder or absolute, optionally followed by its label after
a tab or a comma (``cats/1.jpg<TAB>cat``, ``cats/1.jpg,cat``; a comma inside a path is
fine when the whole line names a file, or in CSV quotes). Blank lines and lines starting
with ``#`` are skipped, and so is a first line of column names (``path,label``). The
images keep the list's order; a listed file that is missing is reported among the
dataset's failures, and a file listed twice counts once.

Built-in sets, usable offline: ``"samples"`` (scikit-image's sample photos, the ones
``engine.data.samples`` lists) and ``"digits"`` (scikit-learn's 1,797 labelled 8x8 digits,
rendered once to 64x64 PNGs in the cache, labels "0" to "9").
"""

from __future__ import annotations

import csv
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from engine.core.errors import MethodInputError
from engine.core.part_files import part_folder, remove_stale_parts
from engine.data.images import IMAGE_SUFFIXES, load_image, write_png

if TYPE_CHECKING:  # torch is imported lazily, by the code paths that decode
    import torch

BUILTIN_DATASETS = ("samples", "digits")
LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".lst")  # a file of image paths, one a line
_LIST_HEADERS = ("path", "file", "filename", "image", "image_path")  # a first line naming the columns
# Bump when the way pixels are decoded or resized changes: it is part of every feature
# store's key, so stale features are never reused.
# 2: PyTorch's bicubic instead of Pillow's (a grey level apart, rarely two), JPEGs drafted
#    per axis, EXIF orientation applied to the square.
LOADER_VERSION = 2
DIGITS_SIDE = 64  # each 8x8 digit is drawn as a 64x64 picture (8x8 blocks, no smoothing)


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One image file: where it is and what it looked like when listed (no pixels).

    ``size`` (bytes) and ``mtime_ns`` identify this version of the file: a feature cached
    for (path, size, mtime_ns) is reused only while both are unchanged.
    """

    path: str  # absolute
    label: str | None
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass
class Dataset:
    """A listed set of image files, sorted by path so every listing has the same order.

    ``failures`` holds (path, message) for what the listing itself could not read
    (a folder without permission, a file that vanished); decoding failures are found
    later, by ``iter_batches``.
    """

    root: Path
    name: str
    items: list[DatasetItem]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DatasetItem:
        return self.items[index]

    def __iter__(self) -> Iterator[DatasetItem]:
        return iter(self.items)

    @property
    def labels(self) -> list[str | None]:
        """Each item's label, aligned with ``items`` (None for images in the root)."""
        return [item.label for item in self.items]

    @property
    def classes(self) -> list[str]:
        """The distinct labels, sorted; empty when the folder has no subfolders."""
        return sorted({item.label for item in self.items if item.label is not None})

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.items]

    @property
    def identity(self) -> str:
        """What names this dataset's own files beside a feature store (its fill lock, top
        lists and neighbour index): a store serves every dataset of its model and layer."""
        return f"{self.name}\n{self.root}"


# A folder of at least this many images keeps its listing (see ``open_dataset``): listing
# stats every file, 0.6 s per 100,000 here, so a million-image folder took 6 s before each
# query of ``neighbors`` instead of the index's milliseconds.
KEEP_LISTING_FROM = 20_000
_KEPT_LISTINGS = 4
_kept: "OrderedDict[Path, tuple[tuple[tuple[str, int], ...], Dataset]]" = OrderedDict()
_kept_lock = threading.Lock()


def open_dataset(spec: str | os.PathLike, *, fresh: bool = False) -> Dataset:
    """List a dataset: a folder (searched recursively), a list file or a built-in name.

    A plain string equal to a built-in name ("samples", "digits") opens that set; write
    "./digits" for a folder of that name. Raises ``MethodInputError`` for a missing
    folder, another kind of file, a folder without any image, or a list naming none.

    A dataset of ``KEEP_LISTING_FROM`` images or more is listed again only when one of its
    folders changed (a file added, removed or renamed: its modification time moves; for a
    list, the list file or a folder holding a listed image), or when ``fresh``: checking a
    million images' folders takes milliseconds where listing them takes seconds. An image
    rewritten in place under the same name is then seen at the next ``fresh`` listing (the
    window's Dataset > Open makes one).
    """
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        return _open_samples() if spec == "samples" else _open_digits()
    root = Path(spec).expanduser()
    if not root.exists():
        raise MethodInputError(f"no such folder: {root}")
    listed = root.is_file() and root.suffix.lower() in LIST_SUFFIXES
    if not listed and not root.is_dir():
        raise MethodInputError(f"{root} is a file; a dataset is a folder of images (subfolder names become labels) "
                               f"or a list of image paths ({', '.join(LIST_SUFFIXES)})")
    root = root.resolve()
    if not fresh:
        kept = _kept_listing(root)
        if kept is not None:
            return kept
    if listed:
        list_mtime_ns = root.stat().st_mtime_ns  # before reading it: an edit meanwhile is seen next time
        dataset = _open_list(root)
        if len(dataset) >= KEEP_LISTING_FROM:
            folders = sorted({os.path.dirname(item.path) for item in dataset.items})
            _keep_listing(root, dataset, ((str(root), list_mtime_ns),
                                          *((folder, os.stat(folder).st_mtime_ns) for folder in folders)))
        return dataset
    items, failures, folders = _scan(root)
    if not items and failures and failures[0][0] == str(root):
        raise MethodInputError(failures[0][1])
    if not items:
        suffixes = " ".join(IMAGE_SUFFIXES)
        raise MethodInputError(f"{root} holds no images (looked for {suffixes} in it and its subfolders)")
    dataset = Dataset(root=root, name=root.name or str(root), items=items, failures=failures)
    if len(items) >= KEEP_LISTING_FROM:
        _keep_listing(root, dataset, folders)
    return dataset


def _keep_listing(spec: Path, dataset: Dataset, watched: tuple[tuple[str, int], ...]) -> None:
    """Keep ``dataset`` as the listing of ``spec`` while every watched path keeps its modification time."""
    with _kept_lock:
        _kept[spec] = (watched, dataset)
        _kept.move_to_end(spec)
        while len(_kept) > _KEPT_LISTINGS:
            _kept.popitem(last=False)


def _kept_listing(spec: Path) -> Dataset | None:
    """The kept listing of ``spec`` (a folder or list file) while no path it watches has changed since."""
    with _kept_lock:
        kept = _kept.get(spec)
    if kept is None:
        return None
    watched, dataset = kept
    for path, mtime_ns in watched:
        try:
            if os.stat(path).st_mtime_ns != mtime_ns:
                return None
        except OSError:
            return None
    return dataset


def _scan(root: Path) -> tuple[list[DatasetItem], list[tuple[str, str]], tuple[tuple[str, int], ...]]:
    """Every image file under ``root`` with its stat, and each folder listed with its
    modification time; hidden files and folders are skipped."""
    found: list[tuple[tuple[str, ...], DatasetItem]] = []
    folders: list[tuple[str, int]] = []
    failures: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()  # folders already listed: symlinks may loop
    stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while stack:
        folder, parts = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            folders.append((folder, info.st_mtime_ns))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            failures.append((folder, f"{os.path.basename(folder)} cannot be read: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .git, .DS_Store, AppleDouble files, our own .part files
            try:
                if entry.is_dir():
                    stack.append((entry.path, parts + (entry.name,)))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    stat = entry.stat()
                    label = parts[0] if parts else None
                    item = DatasetItem(entry.path, label, stat.st_size, stat.st_mtime_ns)
                    found.append((parts + (entry.name,), item))
            except OSError as exc:
                failures.append((entry.path, f"{entry.name} cannot be read: {exc.strerror or exc}"))
    found.sort(key=lambda pair: pair[0])
    return [item for _, item in found], failures, tuple(folders)


def _open_list(path: Path) -> Dataset:
    """The images a list file names (see the module's docstring for its lines).

    The dataset's root is the deepest folder holding every listed image, so each one has
    a path relative to it (a folder run names its outputs by it).
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise MethodInputError(f"the image list {path} cannot be read: {why}") from None
    items: list[DatasetItem] = []
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, label = _list_entry(line, path.parent)
        target = os.path.abspath(path.parent / Path(name).expanduser())
        if number == 1 and name.lower() in _LIST_HEADERS and not os.path.exists(target):
            continue
        if target in seen:
            continue
        seen.add(target)
        try:
            stat = os.stat(target)
            if not os.path.isfile(target):
                raise IsADirectoryError(21, "it is a folder, not an image")
        except OSError as exc:
            failures.append((target, f"{os.path.basename(target)} (line {number} of {path.name}) cannot be read: "
                                     f"{exc.strerror or exc}"))
            continue
        items.append(DatasetItem(target, label, stat.st_size, stat.st_mtime_ns))
    if not items:
        why = f": {failures[0][1]}" if failures else ""
        if len(failures) > 1:
            why += f" (and {len(failures) - 1} more)"
        raise MethodInputError(f"the image list {path} names no image that can be read{why}")
    root = Path(os.path.commonpath([os.path.dirname(item.path) for item in items]))
    return Dataset(root=root, name=path.name, items=items, failures=failures)


def _list_entry(line: str, folder: Path) -> tuple[str, str | None]:
    """(path, label or None) of one line of an image list."""
    if "\t" in line:
        name, label = line.split("\t", 1)
    elif "," in line and not os.path.isfile(folder / line):
        fields = next(csv.reader([line]))
        name, label = fields[0], fields[1] if len(fields) > 1 else ""
    else:
        name, label = line, ""
    return name.strip(), label.strip() or None


def _item(path: Path, label: str | None) -> DatasetItem:
    stat = path.stat()
    return DatasetItem(str(path), label, stat.st_size, stat.st_mtime_ns)


def _open_samples() -> Dataset:
    from engine.data.samples import sample_dir, sample_paths

    paths = sample_paths()
    if not paths:
        raise MethodInputError("the sample photos come with scikit-image, which is not installed")
    items = [_item(path.resolve(), None) for path in paths.values()]
    return Dataset(root=Path(sample_dir()).resolve(), name="samples", items=items)


def digits_dir() -> Path:
    """Where the digits are rendered: ``<cache>/datasets/digits/<label>/<index>.png``."""
    from engine.core.cache_dir import cache_dir

    return cache_dir() / "datasets" / "digits"


def _open_digits() -> Dataset:
    folder = digits_dir()
    if not folder.is_dir():
        render_digits(folder)
    items, failures, _folders = _scan(folder.resolve())
    return Dataset(root=folder.resolve(), name="digits", items=items, failures=failures)


def render_digits(folder: Path) -> None:
    """Draw scikit-learn's digits as PNGs, once; the folder appears complete or not at all.

    Each 8x8 image (values 0..16, ink high) becomes a 64x64 grayscale PNG, pixel value
    ``round(v * 255 / 16)``, every digit pixel an 8x8 block. The files are written into a
    hidden sibling folder that is renamed into place when all 1,797 are there, so an
    interrupted render is never mistaken for the dataset.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MethodInputError("the digits dataset comes with scikit-learn, which is not installed") from None
    digits = load_digits()
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(folder.parent)  # renders a killed process left behind
    with part_folder(folder) as scratch:
        block = DIGITS_SIDE // digits.images.shape[1]
        pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        for index, (image, target) in enumerate(zip(pixels, digits.target)):
            big = np.kron(image, np.ones((block, block), dtype=np.uint8))
            path = scratch / str(int(target)) / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(path, Image.fromarray(big, "L"))
        try:
            os.rename(scratch, folder)
        except OSError:
            if not folder.is_dir():  # not "another process finished first"
                raise


# ------------------------------------------------------------------------ pixels


# A large JPEG is decoded at 1/2, 1/4 or 1/8 scale, but never below this many times the
# square on either axis, so the resize still averages over enough pixels (the margin
# Pillow's own thumbnail() keeps). Decoding down to the square itself saved another
# 15-30% of the time, but moved the features of textured photos 3x further from those of
# a full-quality resize (5x what saving the photo as a quality-90 JPEG does to them).
JPEG_MARGIN = 2
# Formats read by the quick path of load_square (libjpeg can draft; PNG is the other
# common photo format); everything else goes through load_image.
_QUICK_FORMATS = ("JPEG", "MPO", "PNG")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with
_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose reads
# EXIF orientation -> what makes a square upright (Pillow's Transpose ops on an H x W x C array)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (a quarter turn clockwise)
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90 (a quarter turn anticlockwise)
}


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """An RGB picture as the ``size x size x 3`` uint8 square a dataset image becomes.

    Stretched to the square (no crop), bicubic with antialiasing (``resize_square``).
    Use it for a query image, so it is prepared like the dataset it is compared with.
    """
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return _as_rgb(resize_square(np.array(image), size))


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """H x W (grey) or H x W x C uint8 pixels stretched to ``size x size x C``, bicubic.

    PyTorch's antialiased bicubic on channels-last uint8: the filter of Pillow's BICUBIC
    (equal but for a rare grey level or two), about 7x faster on a CPU, where Pillow's
    resize of a 512 px JPEG cost more than decoding it. One image is a single unit of
    work for PyTorch, so this runs on the calling thread alone: decoding threads start
    no thread teams of their own.
    """
    import torch
    import torch.nn.functional as F

    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[:2] == (size, size):
        return pixels
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # channels-last, no copy
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True)[0].permute(1, 2, 0).numpy()


def _as_rgb(square: np.ndarray) -> np.ndarray:
    """A writable H x W x 3 copy of an H x W x 1 or x 3 square."""
    return np.array(np.broadcast_to(square, (*square.shape[:2], 3)))


def load_square(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read one image file as a ``size x size x 3`` uint8 square; raises ``ImageLoadError``.

    Exactly what ``iter_batches`` produces for that file.
    """
    return _as_rgb(_read_square(path, size))


def _read_square(path: str | os.PathLike, size: int) -> np.ndarray:
    """``size x size x C`` uint8, C = 1 for a grey file and 3 otherwise; raises ``ImageLoadError``.

    The common files (8-bit RGB or grey JPEG and PNG, without transparency) take a quick
    path; anything else, and every file that fails on it, is read by ``load_image``,
    which converts odd modes and says what is wrong with a bad file.
    """
    try:
        square = _quick_square(path, size)
    except Exception:  # damaged or unusual: load_image reads it or explains why it cannot
        square = None
    if square is None:
        square = resize_square(np.array(load_image(path).image), size)
    return square


def _quick_square(path: str | os.PathLike, size: int) -> np.ndarray | None:
    """``_read_square`` for a common file, or None when ``load_image`` must handle it.

    What ``square_pixels(load_image(path).image, size)`` gives, except that a JPEG at
    least twice ``JPEG_MARGIN`` times the square on both axes is decoded at 1/2, 1/4 or
    1/8 scale (stopping at ``JPEG_MARGIN`` times it), a picture over load_image's size cap
    is resized from its full size in one step, and EXIF orientation is applied to the
    square rather than to the picture (stretching to a square commutes with turning it,
    up to a grey level of rounding). A grey picture comes back as one channel (resized
    alone, it gives exactly the pixels of its RGB copy).
    """
    from engine.data.images import MAX_PIXELS

    with Image.open(path) as image:
        if (image.format not in _QUICK_FORMATS or image.mode not in ("RGB", "L") or "transparency" in image.info
                or image.width * image.height > MAX_PIXELS):
            return None
        if image.format == "PNG":
            pixels = _decode_png(path, grey=image.mode == "L")
            orientation = _png_orientation(image)
        else:
            image.draft(image.mode, (JPEG_MARGIN * size, JPEG_MARGIN * size))  # a no-op unless a JPEG
            pixels = np.array(image)  # decodes
            orientation = image.getexif().get(_ORIENTATION, 1)
    square = resize_square(pixels, size)
    return _UPRIGHT[orientation](square) if orientation in _UPRIGHT else square


def _decode_png(path: str | os.PathLike, grey: bool) -> np.ndarray:
    """An 8-bit RGB or grey PNG's pixels, exactly as Pillow decodes them.

    OpenCV's decoder takes 4.2 ms for a 512 px photo where Pillow takes 6.6: on 2 cores
    that decode competes with the forward pass, so it is a tenth of a PNG folder's
    extraction time. Orientation is left to the caller, as for the other formats.
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    if bytes(data[-len(_PNG_END):]) != _PNG_END:
        # Truncated (or with bytes after its end): libpng would print its complaint on
        # stderr; load_image reads the file or says what is wrong with it.
        raise ValueError("not a complete PNG")
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.10 and later decode straight to RGB
    colour = cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag
    pixels = cv2.imdecode(data, (cv2.IMREAD_GRAYSCALE if grey else colour) | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        raise ValueError("OpenCV could not decode it")
    if not grey and rgb_flag is None:
        pixels = np.ascontiguousarray(pixels[:, :, ::-1])  # BGR, as older OpenCV gives it
    return pixels


def _png_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened, not decoded, PNG.

    Pillow's ``getexif()`` decodes a PNG's pixels to look for an eXIf chunk after them,
    which doubled a PNG's cost here; the PNG specification puts the chunk before them.
    """
    if "exif" not in image.info:
        return 1
    exif = Image.Exif()
    exif.load(image.info["exif"])
    return exif.get(_ORIENTATION, 1)


def square_box_to_image(box: tuple[float, float, float, float], size: int,
                        image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in the ``size x size`` model input, in the picture's pixels.

    ``image_size`` is the (width, height) of the picture the box should land on.
    """
    sx, sy = image_size[0] / size, image_size[1] / size
    x0, y0, x1, y1 = box
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


class Batch(NamedTuple):
    """One decoded batch; unpacks as ``indices, pixels, failures``.

    ``pixels[j]`` is the image ``items[indices[j]]``; files that could not be read are
    left out of both and listed in ``failures`` as (path, message).
    """

    indices: list[int]
    pixels: "torch.Tensor"  # N x 3 x size x size, uint8 RGB, contiguous, on the CPU
    failures: list[tuple[str, str]]


def iter_batches(items: Sequence[DatasetItem] | Dataset, indices: Sequence[int], size: int, *,
                 batch_size: int = 32, cancel=None, workers: int | None = None,
                 prefetch: int = 2) -> Iterator[Batch]:
    """Decode ``items[i]`` for each i in ``indices``, in that order, ``batch_size`` at a time.

    A pool of ``workers`` threads (default: one per core, at most 8) decodes up to
    ``prefetch`` batches ahead of the one being consumed, so the consumer rarely waits.
    Each thread writes its squares straight into the batch. An unreadable file never
    stops the scan: it is skipped and reported in the batch's ``failures`` with
    ``load_image``'s message. A batch may therefore hold fewer images than
    ``batch_size``, or none. ``cancel`` (a ``CancelToken``) is checked before each batch
    is handed out; closing the generator stops the pool.
    """
    import torch

    indices = [int(i) for i in indices]
    batch_size = max(1, int(batch_size))
    chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    if not chunks:
        return
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    # Decoding threads keep the normal priority. At the lowest, they filled only the cores
    # the network left idle: a tenth faster on a quiet machine (PNG photos 8.6-9.1 ms per
    # image against 9.6-10.1), but starved by any other busy program (two CPU hogs
    # running: 210 ms per image against 19.5; nice 10: 39).
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convscope-decode")
    try:
        pending: deque = deque()

        def submit(chunk: list[int]) -> None:
            pixels = np.empty((len(chunk), 3, size, size), dtype=np.uint8)
            futures = [pool.submit(_decode_into, pixels, j, items[i].path, size) for j, i in enumerate(chunk)]
            pending.append((chunk, pixels, futures))

        upcoming = iter(chunks)
        for chunk in upcoming:
            submit(chunk)
            if len(pending) > prefetch:
                break
        while pending:
            if cancel is not None:
                cancel.check()
            chunk, pixels, futures = pending.popleft()
            good: list[int] = []
            failures: list[tuple[str, str]] = []
            for j, (index, future) in enumerate(zip(chunk, futures)):
                message = future.result()
                if message:
                    failures.append((items[index].path, message))
                else:
                    good.append(j)
            next_chunk = next(upcoming, None)
            if next_chunk is not None:
                submit(next_chunk)
            if len(good) < len(chunk):
                pixels = pixels[good]  # a compact copy without the unreadable files
            yield Batch([chunk[j] for j in good], torch.from_numpy(pixels), failures)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _decode_into(pixels: np.ndarray, position: int, path: str, size: int) -> str:
    """Decode ``path`` into ``pixels[position]`` (3 x size x size); '' or why it failed."""
    from engine.core.errors import ConvScopeError

    try:
        pixels[position] = _read_square(path, size).transpose(2, 0, 1)  # a grey square fills all 3 channels
        return ""
    except ConvScopeError as exc:
        return str(exc)
    except Exception as exc:  # a damaged file can make a decoder fail in any way; never stop the scan
        return f"{os.path.basename(path)} could not be read: {exc}"


def batch_to_input(pixels: "torch.Tensor", preprocessing, device=None, dtype=None) -> "torch.Tensor":
    """uint8 N x 3 x H x W pixels to the model's normalised float input on ``device``.

    The uint8 batch crosses to the device (a quarter of the bytes of floats) and is
    converted there; ``(p / 255 - mean) / std`` is one fused multiply-add per value.
    """
    import torch

    dtype = dtype or torch.float32
    x = pixels.to(device, non_blocking=True) if device is not None else pixels
    scale = torch.tensor([1.0 / (255.0 * s) for s in preprocessing.std], dtype=dtype, device=x.device)
    shift = torch.tensor([-m / s for m, s in zip(preprocessing.mean, preprocessing.std)], dtype=dtype, device=x.device)
    return torch.addcmul(shift.view(1, 3, 1, 1), x.to(dtype), scale.view(1, 3, 1, 1))
