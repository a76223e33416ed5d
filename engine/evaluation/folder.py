"""Score attribution methods over a folder of photos: what ``python main.py evaluate`` runs.

Written into the output folder:

- ``settings.json``: the model, methods, metrics and settings of the run;
- ``scores.jsonl``: one line per photo as it is scored (its class, each map's scores, why
  a method gave none, whether it beat the edge map), or the reason a photo could not be
  read. A run that stops (cancelled, interrupted, a crash) resumes where it stopped:
  photos already in the file are skipped, provided the settings are the same;
- ``scores.csv``: the same, one row per photo and map;
- ``summary.json`` and ``summary.csv``: per map and metric the mean, the standard
  deviation and the number of photos, and per method on how many photos it beat the
  edge map;
- ``report.png``: the mean deletion and insertion curves of every map, the summary's
  means beside them.

Boxes for the pointing game come from a CSV file of ``image,x0,y0,x1,y1`` rows (the
photo's file name or its path under the folder, then the box in the photo's pixels;
several rows for several boxes) or a JSON file ``{"image": [[x0, y0, x1, y1], ...]}``.
A photo without boxes is scored on the other metrics.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from engine.anatomy.activations import FeatureCache
from engine.core.errors import ImageLoadError, MethodInputError
from engine.core.jobs import CancelToken, Progress, within
from engine.data.datasets import open_dataset
from engine.data.images import load_image, save_png, write_atomically
from engine.evaluation.report import (DEFAULT_METHODS, DEFAULT_METRICS, ImageReport, check_metrics, score_image,
                                      summarise)
from engine.view.plots import line_plot_picture

SETTINGS, SCORES, SCORES_CSV, SUMMARY, SUMMARY_CSV, REPORT = (
    "settings.json", "scores.jsonl", "scores.csv", "summary.json", "summary.csv", "report.png")
CURVE_POINTS = 11  # the report's curves are drawn at 0, 0.1, ..., 1 of the pixels


def read_boxes(path: str | os.PathLike) -> dict[str, list[tuple[float, float, float, float]]]:
    """Image name -> its boxes (x0, y0, x1, y1), from a CSV or JSON file (see the module)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MethodInputError(f"cannot read the boxes file {path.name}: {exc}") from None
    boxes: dict[str, list] = {}
    if path.suffix.lower() == ".json":
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MethodInputError(f"{path.name} is not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(found, dict):
            raise MethodInputError(f"{path.name} must map each image's name to a list of [x0, y0, x1, y1] boxes")
        for name, entries in found.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                boxes.setdefault(str(name), []).append(parse_box(entry, f"{path.name}, image {name}"))
        return boxes
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or row[0].strip().startswith("#") or (number == 1 and row[0].strip().lower() == "image"):
            continue
        if len(row) != 5:
            raise MethodInputError(f"{path.name}, line {number}: expected image,x0,y0,x1,y1, found {len(row)} fields")
        boxes.setdefault(row[0].strip(), []).append(parse_box(row[1:], f"{path.name}, line {number}"))
    return boxes


def parse_box(entry, where: str) -> tuple[float, float, float, float]:
    """Four numbers x0, y0, x1, y1 with x1 > x0 and y1 > y0 as a box, or an error saying ``where``."""
    try:
        x0, y0, x1, y1 = (float(value) for value in entry)
    except (TypeError, ValueError):
        raise MethodInputError(f"{where}: a box is four numbers x0, y0, x1, y1") from None
    if not (x1 > x0 and y1 > y0):
        raise MethodInputError(f"{where}: a box needs x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def photo_boxes(boxes: dict[str, list], path: str | os.PathLike) -> list | None:
    """The boxes of the photo at ``path`` among ``read_boxes``'s, or None: those under the
    longest name that ends its path, so ``cats/chelsea.png`` before ``chelsea.png``."""
    parts = Path(path).parts
    found, matched = None, 0
    for name, own in boxes.items():
        key = Path(name).parts
        if len(key) > matched and parts[-len(key):] == key:
            found, matched = own, len(key)
    return found


def boxes_csv(boxes: dict[str, list]) -> str:
    """Image name -> its boxes as the CSV ``read_boxes`` reads back: a row per box."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "x0", "y0", "x1", "y1"])
    for name, own in boxes.items():
        writer.writerows([name, *(f"{value:.10g}" for value in box)] for box in own)
    return buffer.getvalue()


def evaluate_folder(model, folder, out_dir, methods=DEFAULT_METHODS, metrics=DEFAULT_METRICS, boxes_file=None,
                    target=None, baseline: str = "blur", steps: int = 50, cancel: CancelToken | None = None):
    """Job: score ``methods`` on every photo of ``folder``, writing into ``out_dir`` (see the
    module); returns what ``summary.json`` holds, over every photo scored so far."""
    cancel = cancel or CancelToken()
    methods, metrics = tuple(methods), tuple(metrics)
    check_metrics(metrics)  # before the folder is listed
    dataset = open_dataset(folder)
    boxes = read_boxes(boxes_file) if boxes_file else {}
    if "pointing" in metrics and not boxes:
        raise MethodInputError("the pointing game needs a boxes file: image,x0,y0,x1,y1 rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": model.name, "weights": model.weights, "methods": list(methods), "metrics": list(metrics),
                "target": target, "baseline": baseline, "steps": steps, "folder": str(dataset.root)}
    _check_settings(out / SETTINGS, settings)
    done = _read_lines(out / SCORES)
    todo = [item for item in dataset if _relative(item.path, dataset.root) not in done]
    yield Progress(0.0, f"{len(todo)} of {len(dataset)} photos to score" + (
        f" ({len(dataset) - len(todo)} scored before)" if len(todo) < len(dataset) else ""))
    features = FeatureCache()
    from engine.methods.base import MethodContext

    for number, item in enumerate(todo):
        cancel.check()
        name = _relative(item.path, dataset.root)
        low, high = number / len(todo), (number + 1) / len(todo)
        try:
            image = load_image(item.path)
        except ImageLoadError as exc:
            line = {"image": name, "error": str(exc)}
        else:
            ctx = MethodContext(model=model, image=image, cancel=cancel, features=features)
            own = photo_boxes(boxes, item.path)
            asked = tuple(m for m in metrics if m != "pointing" or own)
            report = yield from within(score_image(ctx, methods, asked, own, target, baseline, steps), low, high)
            line = report_line(report, name)
        _append_line(out / SCORES, line)
        yield Progress(high, f"{number + 1} of {len(todo)} photos: {name}")
    lines = list(_read_lines(out / SCORES).values())
    summary = write_summary(out, lines, methods)
    return summary


def report_line(report: ImageReport, name: str) -> dict:
    """One photo's line of ``scores.jsonl``: its scores, and its mean curves' points."""
    maps = {}
    for scores in report.maps:
        entry = {"scores": {k: round(v, 6) for k, v in scores.scores.items()}}
        if scores.refused:
            entry["refused"] = scores.refused
        beats = report.beats_edges(scores)
        if beats is not None:
            entry["beats_edges"] = beats
        entry["curves"] = {kind: _resampled(curve) for kind, curve in scores.curves.items()
                           if kind in ("deletion", "insertion")}
        maps[scores.name] = entry
    return {"image": name, "target": report.target, "maps": maps}


def _resampled(curve) -> list[float]:
    points = np.linspace(0.0, 1.0, CURVE_POINTS)
    return [round(float(v), 6) for v in np.interp(points, curve.fractions, curve.probabilities)]


def write_summary(out: Path, lines: list[dict], methods) -> dict:
    """Write scores.csv, summary.json, summary.csv and report.png from the photos' lines."""
    scored = [line for line in lines if "maps" in line]
    rows = []
    for line in scored:
        for name, entry in line["maps"].items():
            rows.append({"image": line["image"], "map": name, "target": line["target"].get("label", ""),
                         **entry["scores"], "beats_edges": entry.get("beats_edges", ""),
                         "refused": entry.get("refused", "")})
    metric_names = sorted({k for row in rows for k in row} - {"image", "map", "target", "beats_edges", "refused"})
    _write_csv(out / SCORES_CSV, rows, ["image", "map", "target", *metric_names, "beats_edges", "refused"])
    summary = summarise((name, metric, value) for line in scored for name, entry in line["maps"].items()
                        for metric, value in entry["scores"].items())
    beats = {name: sum(1 for line in scored if line["maps"].get(name, {}).get("beats_edges") is True)
             for name in methods}
    failed = [{"image": line["image"], "error": line["error"]} for line in lines if "error" in line]
    document = {"photos": len(scored), "unreadable": failed,
                "maps": {name: {metric: {"mean": m, "std": s, "photos": n} for metric, (m, s, n) in by.items()}
                         for name, by in summary.items()},
                "beats_edges": beats}
    write_atomically(out / SUMMARY, lambda fh: fh.write(json.dumps(document, indent=1).encode()), overwrite=True)
    summary_rows = [{"map": name, "metric": metric, "mean": round(m, 6), "std": round(s, 6), "photos": n}
                    for name, by in summary.items() for metric, (m, s, n) in by.items()]
    _write_csv(out / SUMMARY_CSV, summary_rows, ["map", "metric", "mean", "std", "photos"])
    if scored:
        save_png(out / REPORT, report_picture(scored, summary), overwrite=True)
    return document


def report_picture(lines: list[dict], summary: dict) -> np.ndarray:
    """The mean deletion and insertion curves of every map, one plot each, stacked; each
    line's name carries its mean area under the curve."""
    pictures = []
    labels = [f"{p:.1f}" for p in np.linspace(0, 1, CURVE_POINTS)]
    for kind, better in (("deletion", "lower"), ("insertion", "higher")):
        series = {}
        for name in summary:
            curves = [line["maps"][name]["curves"][kind] for line in lines
                      if kind in line["maps"].get(name, {}).get("curves", {})]
            if curves:
                mean = summary[name].get(kind, (float("nan"),))[0]
                series[f"{name} ({mean:.3f})"] = list(np.mean(curves, axis=0))
        if series:
            picture, _ = line_plot_picture(series, labels, title=f"{kind}: mean over {len(lines)} photos, area in "
                                                                 f"brackets ({better} is better)",
                                           y_label="probability of the class", width=1000)
            pictures.append(picture)
    if not pictures:
        picture, _ = line_plot_picture({}, labels, title="no deletion or insertion curves were scored", width=1000)
        pictures.append(picture)
    return np.concatenate(pictures, axis=0)


def _check_settings(path: Path, settings: dict) -> None:
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != settings:
            raise MethodInputError(f"{path.parent} holds the scores of a run with other settings; give another "
                                   f"output folder, or delete that one to start again")
        return
    write_atomically(path, lambda fh: fh.write(json.dumps(settings, indent=1).encode()))


def _read_lines(path: Path) -> dict[str, dict]:
    """The photos' lines written so far, by photo; a half-written last line (a crash while
    writing it) is dropped, so that photo is scored again."""
    found = {}
    if path.exists():
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            found[line["image"]] = line
    return found


def _append_line(path: Path, line: dict) -> None:
    torn = False
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + json.dumps(line) + "\n")  # a torn last line stays a line of its own
        fh.flush()
        os.fsync(fh.fileno())


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda fh: fh.write(buffer.getvalue().encode()), overwrite=True)


def _relative(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()
