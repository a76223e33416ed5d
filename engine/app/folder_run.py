"""Any per-image method over a folder of photos: ``run METHOD --images DIR --out-dir OUT``.

The model is loaded once; each photo of the folder (searched recursively) is opened in
the session, the method runs on it with the same settings, and what the window would
show is exported as ``OUT/<the photo's path under DIR>.png`` with its sidecar, exactly
as File > Export writes one picture. Then:

- a photo whose picture and sidecar are both in OUT already is skipped, so a run that
  stopped resumes where it stopped;
- a photo that cannot be read, or that the method refuses (a map that is zero
  everywhere), is reported and skipped: the run goes on;
- ``OUT/contact-sheet.png`` shows every picture of the folder, captioned with its photo's
  name, and ``OUT/folder-run.json`` says what was done, skipped and failed, and why.

Photos are read in groups of ``PREDICT_BATCH``, and each group's predictions, from which
a method picks a photo's class, are made in one pass per input size (without every
layer's output, which the window keeps for the photo on show). A method with a
``run_many`` (saliency, Grad-CAM) then runs each group's photos of one input size in
shared passes; the others run one photo after another, each job batching what it
computes (masks, steps, samples) for its photo.

Each PNG is encoded on the same thread, between two photos' methods. On a thread of its
own it would overlap the next method, but on two cores it takes a core from torch's
two threads, and the method's pass then slowed from 39 to 89 ms (saliency, bundled model):
the folder ran no faster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.anatomy.activations import PREDICT_BATCH, predict
from engine.core.errors import ConvScopeError
from engine.core.jobs import CancelToken, Progress, within
from engine.data.datasets import open_dataset
from engine.data.images import load_image, save_png, write_atomically
from engine.methods import METHODS
from engine.view.export import sidecar_path_for
from engine.view.gallery import Tile, render_gallery

CONTACT_SHEET, RECORD = "contact-sheet.png", "folder-run.json"
SHEET_TILE = 200  # pixels per picture on the contact sheet
SHEET_COLUMNS = 6


@dataclass
class FolderRun:
    method: str
    done: list[str] = field(default_factory=list)  # photos run now, paths under the folder
    skipped: list[str] = field(default_factory=list)  # found in the output folder already
    failed: list[tuple[str, str]] = field(default_factory=list)  # (photo, why)
    contact_sheet: Path | None = None

    def as_dict(self) -> dict:
        return {"method": self.method, "done": self.done, "skipped": self.skipped,
                "failed": [{"image": name, "error": why} for name, why in self.failed],
                "contact_sheet": str(self.contact_sheet) if self.contact_sheet else None}


def picture_path(out_dir: Path, relative: str) -> Path:
    """Where a photo's picture goes: its path under the folder, as a PNG."""
    return out_dir / Path(relative).with_suffix(".png")


def run_on_folder(session, method_id: str, values: dict, folder, out_dir, cancel: CancelToken | None = None,
                  annotated: bool = True):
    """Job: run ``method_id`` with ``values`` on every photo of ``folder`` in ``session`` (its
    model loaded), exporting into ``out_dir``; returns the ``FolderRun``."""
    cancel = cancel or CancelToken()
    dataset = open_dataset(folder)
    items = list(dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = FolderRun(method_id)
    names = [Path(item.path).relative_to(dataset.root).as_posix() for item in items]
    yield Progress(0.0, f"{method_id} on {len(names)} photos")
    together = getattr(METHODS.get(method_id), "run_many", None) is not None
    for first in range(0, len(names), PREDICT_BATCH):
        cancel.check()
        group = _read_group(session, items, names, range(first, min(first + PREDICT_BATCH, len(names))), out, run)
        for photos in (_by_input_size(session.model, group) if together else [[photo] for photo in group]):
            low, high = photos[0][0] / len(names), (photos[-1][0] + 1) / len(names)
            try:
                if len(photos) == 1:  # the method's own job, as one run in the window
                    session.use_image(photos[0][2])
                    outcomes = [(yield from within(session.start(method_id, values, cancel), low, high))]
                else:
                    job = session.start_many(method_id, values, [image for _, _, image in photos], cancel)
                    outcomes = yield from within(job, low, high)
            except ConvScopeError as refusal:  # a refused run (a blank map): these photos only
                outcomes = [refusal] * len(photos)
            for (number, name, image), outcome in zip(photos, outcomes):
                try:
                    if isinstance(outcome, Exception):
                        raise outcome
                    session.use_image(image)
                    session.show(outcome)
                    target = picture_path(out, name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    session.export(picture=target, overwrite=True, annotated=annotated)
                except ConvScopeError as refusal:  # a refused map, a failed write: this photo only
                    run.failed.append((name, _why(refusal)))
                else:
                    run.done.append(name)
            yield Progress(high, f"{photos[-1][0] + 1} of {len(names)} photos: {photos[-1][1]}")
    have = set(run.done) | set(run.skipped)
    pictures = [(name, picture_path(out, name)) for name in names if name in have]
    if pictures:
        run.contact_sheet = out / CONTACT_SHEET
        save_png(run.contact_sheet, contact_sheet(pictures), overwrite=True)
    write_atomically(out / RECORD, lambda fh: fh.write(json.dumps(run.as_dict(), indent=1).encode()), overwrite=True)
    return run


def _read_group(session, items, names: list[str], numbers: range, out: Path, run: FolderRun) -> list[tuple]:
    """The photos ``numbers`` still to run, read, with their predictions made in one pass per
    input size and kept for the method (which picks its class from them): (number, name,
    image). A photo done already is skipped, one that cannot be read is reported."""
    group = []
    for number in numbers:
        name = names[number]
        target = picture_path(out, name)
        if target.exists() and sidecar_path_for(target).exists():
            run.skipped.append(name)
            continue
        try:
            group.append((number, name, load_image(items[number].path)))
        except ConvScopeError as refusal:
            run.failed.append((name, _why(refusal)))
    model = session.model
    if group and model is not None:
        images = [image for _, _, image in group]
        for image, logits in zip(images, predict(model, images)):
            session.features.remember_logits(model, image, logits)
    return group


def _by_input_size(model, group: list[tuple]) -> list[list[tuple]]:
    """The group's photos with one model input size together, in the folder's order of
    each size's first photo."""
    sizes: dict[tuple[int, int], list[tuple]] = {}
    for photo in group:
        sizes.setdefault(model.preprocessing.input_size(*photo[2].size), []).append(photo)
    return list(sizes.values())


def _why(refusal: ConvScopeError) -> str:
    return " ".join(str(refusal).split())


def contact_sheet(pictures: list[tuple[str, Path]]) -> np.ndarray:
    """The pictures in rows of ``SHEET_COLUMNS``, each captioned with its photo's name."""
    tiles = []
    for name, path in pictures:
        with Image.open(path) as picture:
            picture.thumbnail((SHEET_TILE, SHEET_TILE))
            tiles.append(Tile(image=picture.convert("RGB"), path=str(path), caption=name))
    rows = [("", tiles[i:i + SHEET_COLUMNS]) for i in range(0, len(tiles), SHEET_COLUMNS)]
    mosaic, _regions = render_gallery(rows, tile=SHEET_TILE)
    return mosaic
