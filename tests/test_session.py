"""The session without a window: run a method, what is shown, its summary, sidecar and export.

No Qt here: the session is what the window and the command line share, so it must work,
and fail well, on its own.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.app.session import PHOTO, ExplainNeuron, Session, ShowChannel, summarise
from engine.core.errors import (JobCancelled, MethodInputError, NothingToExportError, OutputExistsError,
                                OutputWriteError)
from engine.core.jobs import CancelToken, Frame, Result, drive
from engine.data import images
from engine.view.display import Picture, Scatter
from engine.view.plots import bar_picture
from engine.view.render import render
from engine.view.view_settings import ViewSettings


@pytest.fixture
def session(bundled, chelsea_path):
    session = Session()
    session.model = bundled  # loaded once for the whole test run
    session.open_image(chelsea_path)
    return session


@pytest.fixture
def saliency(session):
    return session.show(drive(session.start("saliency", {"target": "tabby"}, CancelToken())))


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_method_run_through_the_session_carries_its_provenance(session, saliency, chelsea_path, bundled):
    origin = saliency.provenance
    assert saliency.method == "saliency" and saliency.display is saliency.result.display
    assert origin.params == {"target": 281, "overlay": True}  # resolved: the label became its index
    assert origin.target == {"index": 281, "label": "tabby"} and origin.layer is None
    assert origin.model == "efficientnet_lite0" and origin.weights == bundled.weights
    assert origin.image_path == chelsea_path and origin.device == "cpu"
    assert origin.preprocessing == bundled.preprocessing.as_dict()
    assert origin.metrics["score"] == saliency.result.metrics["score"]


def test_the_summary_is_the_results_numbers(session, saliency):
    assert session.summary() == summarise(saliency.result) == saliency.summary
    assert session.summary().startswith("class tabby; max ")


def test_a_results_first_and_last_losses_read_as_one_change():
    result = Result(display=Picture(rgb=np.zeros((2, 2, 3), np.uint8)), array=None,
                    metrics={"loss_first": 846.7, "style_loss_first": 846.7, "tv_loss_first": 0.0, "loss_last": 43.77,
                             "style_loss_last": 43.39, "tv_loss_last": 0.0, "steps": 40, "mixed": True,
                             "psnr_last": 20.4, "size": [385, 256]})
    assert summarise(result) == "loss 846.7 → 43.77; style loss 846.7 → 43.39; steps 40; psnr last 20.4"


def test_the_sidecar_records_provenance_versions_and_the_view(session, saliency, chelsea_path):
    sidecar = session.sidecar(ViewSettings(colormap="magma", overlay_opacity=0.3))
    assert sidecar["method"] == "saliency" and sidecar["model"] == "efficientnet_lite0"
    assert sidecar["params"] == {"target": 281, "overlay": True} and sidecar["target"] == {"index": 281, "label": "tabby"}
    assert sidecar["image_path"] == chelsea_path and sidecar["device"] == "cpu"
    assert sidecar["view"] == {"colormap": "magma", "overlay_opacity": 0.3, "annotated": True}
    assert "torch" in sidecar["versions"] and sidecar["metrics"]["score"] > 0
    # Without view settings: the display's own colormap, the canvas's default opacity.
    assert session.sidecar()["view"] == {"colormap": saliency.display.colormap, "overlay_opacity": 0.6,
                                         "annotated": True}


def test_the_exported_png_is_the_composite_the_canvas_draws(session, saliency, tmp_path):
    view = ViewSettings(colormap="magma", overlay_opacity=0.3)
    written = session.export(picture=tmp_path / "saliency.png", view=view, annotated=False)
    assert written == [tmp_path / "saliency.png", tmp_path / "saliency.json"]
    exported = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(exported, session.picture(view))
    np.testing.assert_array_equal(exported, render(saliency.display, ViewSettings(colormap="magma", overlay_opacity=0.3)))
    sidecar = json.loads(written[1].read_text())
    expected = session.sidecar(view)
    expected["view"]["annotated"] = False
    assert {k: v for k, v in sidecar.items() if k != "created"} == {k: v for k, v in expected.items() if k != "created"}


def test_bars_export_as_the_engine_draws_them(session, tmp_path):
    shown = session.show(drive(session.start("activations", {"layer": "classifier"}, CancelToken())))
    png, _sidecar = session.export(picture=tmp_path / "bars.png", annotated=False)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), bar_picture(shown.display.values, shown.display.legend))


def test_raw_array_and_animation(session, tmp_path):
    frames = [np.full((6, 8, 3), value, np.uint8) for value in (0, 100, 200)]
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    session.show(session.result_shown("dream", Result(display=Picture(rgb=frames[-1]), array=array, frames=frames)))
    npy, gif = session.export(array=tmp_path / "raw.npy", animation=tmp_path / "run.gif")
    assert np.load(npy).dtype == np.float32 and np.allclose(np.load(npy), array)
    with Image.open(gif) as animation:
        assert animation.n_frames == 3
    session.show(session.result_shown("saliency", Result(display=Picture(rgb=frames[0]), array=None)))
    with pytest.raises(NothingToExportError, match="no raw array"):
        session.export(array=tmp_path / "none.npy")
    with pytest.raises(NothingToExportError, match="frames to animate"):
        session.export(animation=tmp_path / "none.gif")
    assert sorted(files_in(tmp_path)) == ["raw.npy", "run.gif"]


def test_an_embedding_writes_its_coordinates_beside_the_picture(session, tmp_path):
    points = Scatter(xy=np.array([[0.0, 1.0], [2.0, 3.0]]), paths=["a.png", "b.png"], groups=["0", "1"], title="t")
    session.show(session.result_shown("embed", Result(display=points, array=points.xy)))
    written = session.export(picture=tmp_path / "map.png")
    assert [p.name for p in written] == ["map.png", "map.json", "map.csv"]
    assert written[2].read_text().splitlines() == ["path,group,x,y", "a.png,0,0,1", "b.png,1,2,3"]


def test_the_photo_itself_is_shown_with_its_size(session, chelsea_path):
    shown = session.show_photo(box=(1, 2, 30, 40))
    assert shown.method == PHOTO and shown.result is None and shown.summary == ""
    assert shown.display.rgb.shape == (300, 451, 3) and shown.display.boxes == [(1, 2, 30, 40)]
    assert shown.display.note == "chelsea.png: 451x300"
    assert session.sidecar()["method"] == "image" and session.sidecar()["params"] == {}


def test_the_suggested_name_says_photo_method_and_layer(session, saliency, chelsea_path):
    folder = Path(chelsea_path).parent
    assert session.suggested_export_name() == str(folder / "chelsea_saliency.png")
    session.show(drive(session.start("activations", {"layer": "stages.1.1.expand_relu6"}, CancelToken())))
    assert session.suggested_export_name(".npy") == str(folder / "chelsea_activations_stages-1-1-expand_relu6.npy")


def test_bad_values_fail_before_any_work(session):
    with pytest.raises(MethodInputError, match="unknown method"):
        session.start("no-such-method", {}, CancelToken())
    with pytest.raises(MethodInputError, match="at least 1"):
        session.start("dream", {"steps": 0}, CancelToken())


def test_a_cancelled_run_never_returns_what_it_would_have_shown(session, saliency):
    cancel = CancelToken()
    job = session.start("dream", {"steps": 50, "size": 64, "octaves": 1}, cancel)
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Frame):
                cancel.cancel()
    assert session.shown is saliency  # nothing else was shown


# --------------------------------------------------------------------------- clicks on the canvas


def test_clicks_on_an_activation_grid(session):
    shown = session.show(drive(session.start("activations", {"layer": "stages.1.1.expand_relu6"}, CancelToken())))
    tile_h, tile_w = shown.display.tile_size
    gap = shown.display.gap
    assert session.canvas_click(1 * (tile_w + gap) + 2, 2) == ShowChannel(1)  # unsorted: tile 1 is channel 1
    neuron = session.canvas_click(2 * (tile_w + gap) + 5, 1 * (tile_h + gap) + 7, shift=True)
    assert neuron == ExplainNeuron("stages.1.1.expand_relu6", 12 + 2, 7, 5)  # 12 tiles a row
    assert neuron.values() == {"layer": "stages.1.1.expand_relu6", "channel": 14, "at": "7,5"} and neuron.opens_panel
    assert session.canvas_click(tile_w + gap / 2, 2, shift=True) is None  # on the gap between tiles
    assert session.canvas_click(-1, 2) is None and session.canvas_click(1e6, 2) is None


def test_a_click_on_one_channel_over_the_photo_explains_its_neuron_there(session):
    shown = session.show(drive(session.start("activations", {"layer": "head.relu6", "channel": 5}, CancelToken())))
    grid_h, grid_w = shown.display.values.shape
    image_h, image_w = shown.display.photo.shape[:2]
    y, x = grid_h - 1, 3
    action = session.canvas_click((x + 0.5) * image_w / grid_w, (y + 0.5) * image_h / grid_h)
    assert action == ExplainNeuron("head.relu6", 5, y, x)
    assert session.canvas_click(image_w + 1, 0) is None


def test_clicks_mean_nothing_on_other_results(session, saliency):
    assert session.canvas_click(10, 10) is None
    session.show_photo()
    assert session.canvas_click(10, 10, shift=True) is None


def test_the_click_hint_follows_the_kind_shown(session, saliency):
    def hint_for(values):
        session.show(drive(session.start("activations", values, CancelToken())))
        return session.click_hint()

    assert hint_for({"layer": "stages.1.1.expand_relu6"}).startswith("Click a tile to see its channel")
    assert hint_for({"layer": "head.relu6", "channel": 5}).startswith("Click the image for guided backprop")
    # A vector layer with the channel field still set shows bars: a click there does nothing, so no hint.
    assert hint_for({"layer": "classifier", "channel": 5}) == "" and session.canvas_click(10, 10) is None
    session.show(saliency)
    assert session.click_hint() == ""


# --------------------------------------------------------------------------- failing exports


def test_an_existing_pair_is_kept_without_overwrite(session, saliency, tmp_path):
    session.export(picture=tmp_path / "out.png")
    before = files_in(tmp_path)
    with pytest.raises(OutputExistsError) as caught:
        session.export(picture=tmp_path / "out.png", view=ViewSettings(colormap="turbo"))
    assert caught.value.path == str(tmp_path / "out.png") and "exists already" in str(caught.value)
    assert files_in(tmp_path) == before
    assert session.existing_outputs(picture=tmp_path / "out.png") == [tmp_path / "out.png", tmp_path / "out.json"]


@pytest.mark.parametrize("case", ["folder", "parent is a file", "sidecar name is a folder"])
def test_a_name_that_cannot_be_a_file_is_refused_and_nothing_written(session, saliency, tmp_path, case):
    if case == "folder":
        (tmp_path / "out.png").mkdir()
        target, reason = tmp_path / "out.png", "it is a folder"
    elif case == "parent is a file":
        (tmp_path / "notes").write_text("x")
        target, reason = tmp_path / "notes" / "out.png", f"{tmp_path / 'notes'} is a file, not a folder"
    else:
        (tmp_path / "out.json").mkdir()
        target, reason = tmp_path / "out.png", "it is a folder"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputWriteError) as caught:
        session.check_outputs(picture=target, overwrite=True)
    assert caught.value.reason == reason
    with pytest.raises(OutputWriteError) as caught:
        session.export(picture=target, overwrite=True)
    assert caught.value.reason == reason
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("failing", ["out.png", "out.json"])
def test_a_full_disk_leaves_the_old_pair_whole(session, saliency, tmp_path, monkeypatch, failing):
    session.export(picture=tmp_path / "out.png")
    before = files_in(tmp_path)
    real_stage = images._stage

    def disk_full(target, write):
        if Path(target).name == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stage(target, write)

    monkeypatch.setattr(images, "_stage", disk_full)
    with pytest.raises(OutputWriteError) as caught:
        session.export(picture=tmp_path / "out.png", view=ViewSettings(colormap="turbo", overlay_opacity=1.0), overwrite=True)
    assert str(caught.value) == f"cannot write {tmp_path / failing}: the disk is full"
    assert files_in(tmp_path) == before


def test_a_read_only_folder(session, saliency, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:  # root writes anyway: there the refusal is injected below
        folder.chmod(0o500)
        try:
            with pytest.raises(OutputWriteError, match="no permission to write in"):
                session.export(picture=folder / "out.png")
        finally:
            folder.chmod(0o700)
    monkeypatch.setattr(images, "_stage", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(OutputWriteError) as caught:
        session.export(picture=folder / "out.png")
    assert str(caught.value) == f"cannot write {folder / 'out.png'}: no permission to write in {folder}"
    assert list(folder.iterdir()) == []


def test_two_outputs_under_one_name_are_refused(session, saliency, tmp_path):
    with pytest.raises(OutputWriteError, match="written there too"):
        session.export(picture=tmp_path / "a.png", array=tmp_path / "a.json")
    with pytest.raises(OutputWriteError, match=r"\.png name"):
        session.export(picture=tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []


def test_nothing_shown_is_nothing_to_export(bundled, tmp_path):
    session = Session()
    session.model = bundled
    with pytest.raises(NothingToExportError, match="nothing to export"):
        session.export(picture=tmp_path / "x.png")


# -- the photo's boxes around the object, for the pointing game ---------------------------------
CENTRE_BOX = (200, 125, 250, 175)  # x0, y0, x1, y1 around the middle of the 451x300 photo
CORNER_BOX = (0, 0, 40, 40)  # a hundred pixels and more from it


def compared(session, boxes, metrics=("pointing",)):
    session.set_boxes(boxes)
    return drive(session.compare(("saliency",), metrics, CancelToken(), steps=4))


def test_the_pointing_game_scores_the_maps_peak_against_the_photos_boxes(session):
    # The centred reference map peaks in the middle of the photo: a hit on a box there, a miss in the corner.
    report = compared(session, [CENTRE_BOX])
    centre = next(m for m in report.maps if m.name == "reference: centre")
    assert centre.scores["pointing"] == 1.0 and report.boxes == [CENTRE_BOX]
    report = compared(session, [CORNER_BOX])
    assert next(m for m in report.maps if m.name == "reference: centre").scores["pointing"] == 0.0
    report = compared(session, [CORNER_BOX, CENTRE_BOX])  # any of the object's boxes
    assert next(m for m in report.maps if m.name == "reference: centre").scores["pointing"] == 1.0


def test_the_pointing_game_without_boxes_says_where_to_get_them(session):
    session.set_boxes([])
    with pytest.raises(MethodInputError, match="draw one on the photo, or load a boxes file"):
        session.compare(("saliency",), ("deletion", "pointing"), CancelToken())


def test_the_boxes_belong_to_the_photo(session, chelsea_path):
    session.set_boxes([CENTRE_BOX])
    session.open_image(chelsea_path)  # the same photo opened again is opened afresh
    assert session.boxes == ()
    with pytest.raises(MethodInputError, match="box 1: a box needs x1 > x0"):
        session.set_boxes([(50, 50, 10, 60)])


def test_the_photos_boxes_load_from_the_clis_boxes_file(session, tmp_path, monkeypatch):
    from engine.evaluation import folder

    table = tmp_path / "boxes.csv"
    table.write_text("image,x0,y0,x1,y1\nchelsea.png,20,0,400,300\nother.png,1,1,9,9\nchelsea.png,1,2,3,4\n")
    reader, read = folder.read_boxes, []
    monkeypatch.setattr(folder, "read_boxes", lambda path: read.append(path) or reader(path))
    assert session.load_boxes(table) == ((20, 0, 400, 300), (1, 2, 3, 4)) and read == [table]
    listing = tmp_path / "boxes.json"
    listing.write_text('{"data/chelsea.png": [[5, 6, 7, 8]], "chelsea.png": [[1, 1, 2, 2]]}')
    assert session.load_boxes(listing) == ((5, 6, 7, 8),)  # the longer name of the photo's path first
    table.write_text("image,x0,y0,x1,y1\nother.png,1,1,9,9\n")
    with pytest.raises(MethodInputError, match="no boxes for chelsea.png: it has boxes for other.png"):
        session.load_boxes(table)
    assert session.boxes == ((5, 6, 7, 8),)  # a file that gave nothing left the boxes as they were


def test_a_comparison_exports_with_its_boxes(session, tmp_path):
    import dataclasses

    from engine.evaluation.figure import comparison_figure
    from engine.evaluation.folder import read_boxes
    from engine.view.gallery import BOX

    report = compared(session, [CORNER_BOX, CENTRE_BOX])
    written = session.export_comparison(picture=tmp_path / "comparison.png", table=tmp_path / "comparison.csv")
    assert [p.name for p in written] == ["comparison.png", "comparison.csv", "comparison.boxes.csv"]
    assert read_boxes(written[2]) == {"chelsea.png": [CORNER_BOX, CENTRE_BOX]}  # what Load boxes and the CLI read
    assert "pointing" in written[1].read_text().splitlines()[0]
    # The figure is the one without boxes and their outlines: pixels of the boxes' colour on every tile
    boxed = np.asarray(Image.open(written[0]))[..., :3].astype(int)
    plain = comparison_figure(dataclasses.replace(report, boxes=[]), session.image.to_array()).astype(int)
    outlined = np.abs(boxed - BOX).sum(-1) < np.abs(plain - BOX).sum(-1) - 80
    assert outlined.sum() > 4 * 2 * 4 * 15  # four tiles, two boxes, four sides, a side tens of pixels long
    columns = np.flatnonzero(outlined.any(axis=0))
    assert np.sum(np.diff(columns) > 50) == 4 * 2 - 1  # in eight groups of columns: the two boxes of each tile
    session.set_boxes([])
    drive(session.compare(("saliency",), ("deletion",), CancelToken(), steps=4))
    written = session.export_comparison(table=tmp_path / "plain.csv")
    assert [p.name for p in written] == ["plain.csv"]  # no boxes, no boxes file


def test_a_compared_map_opens_with_the_boxes_drawn(session):
    report = compared(session, [CENTRE_BOX])
    shown = session.open_compared("saliency")
    assert shown.display.boxes == [(125, 200, 175, 250)]  # top, left, bottom, right over the photo
    assert report.maps[0].result.display.boxes == []  # the method's own picture is left as it was
