"""A method over a folder of photos (``run METHOD --images DIR --out-dir OUT``, Evaluate >
Run the current method on a folder) against the same session driven one photo at a time.

The folder: the nine sample photos at 640 x 480, each also mirrored (18 photos of one
input size, as a camera's folder is). Ours: ``run_on_folder``, which reads the photos in
groups, predicts each group in one pass and, for saliency and Grad-CAM, takes the group's
gradients in one pass. The reference: what a script over the session API does, and what the folder
run did before: for each photo ``open_image`` (its predictions and every layer's output,
as the window computes them), the method, ``export``; then the contact sheet. Both write
the same pictures, sidecars and sheet into a fresh folder each time; bundled model;
medians of interleaved runs. (Encoding the PNGs is most of a photo's time: 41 ms of about
100 at zlib level 4, which ``engine.data.images.PNG_COMPRESSION`` explains.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.common import Row, median_times_interleaved

METHODS = ("saliency", "gradcam")
REPEATS = 3


def run() -> list[Row]:
    from PIL import Image

    from engine.app.folder_run import CONTACT_SHEET, contact_sheet, picture_path, run_on_folder
    from engine.app.session import Session
    from engine.core.jobs import CancelToken, drive
    from engine.data.images import save_png
    from engine.data.samples import sample_paths

    work = Path(tempfile.mkdtemp(prefix="convscope-folder-bench-"))
    photos = work / "photos"
    photos.mkdir()
    for name, path in sample_paths().items():
        with Image.open(path) as opened:
            picture = opened.convert("RGB").resize((640, 480))
        picture.save(photos / f"{name}.png")
        picture.transpose(Image.FLIP_LEFT_RIGHT).save(photos / f"{name}-mirrored.png")
    names = sorted(path.name for path in photos.iterdir())
    session = Session()
    session.load_model()
    rows = []
    try:
        for method in METHODS:
            def ours(method=method):
                out = work / "ours"
                shutil.rmtree(out, ignore_errors=True)
                drive(run_on_folder(session, method, {}, photos, out))

            def one_at_a_time(method=method):
                out = work / "reference"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                for name in names:
                    session.open_image(str(photos / name))
                    session.show(drive(session.start(method, {}, CancelToken())))
                    session.export(picture=picture_path(out, name), overwrite=True)
                save_png(out / CONTACT_SHEET, contact_sheet([(name, picture_path(out, name)) for name in names]))

            ours_s, reference_s = median_times_interleaved([ours, one_at_a_time], repeats=REPEATS)
            rows.append(Row(f"{method} over a folder of {len(names)} photos (640 x 480)", ours_s, "s",
                            reference=reference_s,
                            note=f"{1000 * ours_s / len(names):.0f} ms a photo with its PNG; reference: the session "
                                 f"one photo at a time; median of {REPEATS}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows
