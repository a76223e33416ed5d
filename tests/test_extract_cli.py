"""`extract` on the command line with the local engine: one JSON line, resumable, clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from engine.app.cli import main
from engine.core.jobs import drive
from engine.data.datasets import open_dataset
from engine.data.extraction import extract
from engine.models.registry import load_model


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for index in range(6):
        label = "warm" if index % 2 else "cool"
        (tmp_path / "pics" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "pics" / label / f"{index}.png")
    return tmp_path / "pics"


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_stores_the_rows_then_finds_them_cached(photos, capsys):
    code, out, err = cli(capsys, "extract", "--dataset", photos, "--layer", "early", "--batch-size", "4")
    assert code == 0, err
    line = json.loads(out)
    assert (line["rows"], line["computed"], line["cached"], line["skipped"]) == (6, 6, 0, 0)
    assert line["layer"] == "stages.1.1.expand_relu6" and line["kind"] == "avgpool" and line["engine"] == "local"
    assert "6 of 6 images" in err
    # the store is the one the methods read: the same rows, and nothing computed again
    result = drive(extract(load_model(), open_dataset(photos), line["layer"]))
    assert result.computed == 0 and str(result.store.folder) == line["store"]
    result.close()
    code, out, _ = cli(capsys, "extract", "--dataset", photos, "--layer", "early")
    assert code == 0 and (json.loads(out)["computed"], json.loads(out)["cached"]) == (0, 6)


def test_a_list_file_is_a_dataset_on_the_command_line(photos, tmp_path, capsys):
    listed = tmp_path / "some.txt"
    listed.write_text("pics/cool/0.png\tcool\npics/warm/1.png\tloud\nmissing.png\n")
    code, out, err = cli(capsys, "extract", "--dataset", listed, "--layer", "early", "--kind", "channel-max")
    assert code == 0, err
    line = json.loads(out)
    assert (line["rows"], line["computed"], line["skipped"]) == (2, 2, 1)
    assert "skipped" in err and "missing.png (line 3 of some.txt)" in err


@pytest.mark.parametrize("args, words", [
    (["--address", "127.0.0.1:6379"], "--address goes with --engine ray"),
    (["--workers", "0"], "--workers"),
    (["--layer", "nowhere"], "no layer 'nowhere'"),
])
def test_bad_extract_flags_are_one_line(photos, capsys, args, words):
    flags = ["extract", "--dataset", photos, "--layer", "early", *args]
    code, out, err = cli(capsys, *flags)
    assert code == 2 and out == "" and words in err and len(err.strip().splitlines()) == 1
