"""fast-style-train --save: a place that cannot be written fails before training, and a write
that fails mid-run (a full disk) stops with the last good checkpoint whole, saying where it is."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from engine.app.cli import main
from engine.core.errors import ConvScopeError, MethodInputError
from engine.data.samples import sample_path
from engine.style import style_library
from engine.style.style_library import checkpoint_path
from tests.test_fast_style import TRAIN, cache, content_folder, context, train  # noqa: F401 - fixtures

BRICK = str(sample_path("brick"))


def cli_train(capsys, save, *extra):
    code = main(["run", "fast-style-train", "--dataset", "samples", "--style", BRICK, "--steps", "2", "--batch", "1",
                 "--size", "32", "--width", "8", "--blocks", "1", "--save", str(save), *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_before_training(code, out, err, says):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --save ") and says in lines[0], err


def no_training(monkeypatch):
    """Fail the test if a training step starts."""
    from engine.methods import fast_style_train

    def trains(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(fast_style_train.Training, "train_step", trains)


def test_a_parent_that_is_a_file_is_refused_before_training(capsys, tmp_path, monkeypatch, cache):
    no_training(monkeypatch)
    (tmp_path / "notes.txt").write_text("a file")
    code, out, err = cli_train(capsys, tmp_path / "notes.txt" / "styles" / "candy.pt")
    assert_refused_before_training(code, out, err, f"{tmp_path / 'notes.txt'} is a file, not a folder")


def test_a_folder_as_the_checkpoint_is_refused_before_training(capsys, tmp_path, monkeypatch, cache):
    no_training(monkeypatch)
    checkpoint_path(tmp_path / "candy.pt").mkdir()
    code, out, err = cli_train(capsys, tmp_path / "candy.pt")
    assert_refused_before_training(code, out, err, "candy.pt.ckpt is a folder")


def test_a_folder_as_the_save_is_refused_before_training(capsys, tmp_path, monkeypatch, cache):
    no_training(monkeypatch)
    code, out, err = cli_train(capsys, tmp_path)
    assert_refused_before_training(code, out, err, "that is a folder")


@pytest.mark.parametrize("error", [
    (errno.EACCES, "Permission denied", "permission denied"),
    (errno.EROFS, "Read-only file system", "read-only file system"),
])
def test_a_folder_that_cannot_be_written_is_refused_before_training(capsys, tmp_path, monkeypatch, cache, error):
    number, strerror, says = error
    no_training(monkeypatch)
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anywhere: make the file system refuse, as it would anyone else
        real = style_library.create_part_file

        def refuse(path, *args, **kwargs):
            if os.path.dirname(path) == str(folder):
                raise OSError(number, strerror, str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(style_library, "create_part_file", refuse)
    elif number != errno.EACCES:
        pytest.skip("a read-only file system cannot be made without privileges")
    code, out, err = cli_train(capsys, folder / "candy.pt")
    folder.chmod(0o755)
    assert_refused_before_training(code, out, err, f"cannot write there ({says})")
    assert os.listdir(folder) == []


class FullDisk:
    """``write_atomically`` for the style library that fails from its ``fail_from``-th call on,
    half way through the bytes, as a disk that fills up does."""

    def __init__(self, monkeypatch, fail_from: int) -> None:
        self.real, self.calls, self.fail_from = style_library.write_atomically, 0, fail_from
        monkeypatch.setattr(style_library, "write_atomically", self)

    def __call__(self, path, write, **kwargs):
        self.calls += 1
        if self.calls < self.fail_from:
            return self.real(path, write, **kwargs)

        def fills_up(handle):
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")

        return self.real(path, fills_up, **kwargs)


def test_a_full_disk_at_a_checkpoint_stops_with_the_last_good_one_whole(bundled, cache, content_folder, tmp_path,
                                                                        monkeypatch):
    target = tmp_path / "candy.pt"
    disk = FullDisk(monkeypatch, fail_from=3)  # checkpoints after steps 1 and 2 land; the one after step 3 fails
    with pytest.raises(ConvScopeError) as caught:
        train(context(bundled), target, steps=5, dataset=str(content_folder), checkpoint_every=1)
    assert not isinstance(caught.value, MethodInputError)
    checkpoint = checkpoint_path(target)
    assert str(caught.value) == (
        f"could not write the checkpoint {checkpoint} at step 3 (no space left on device), so training stopped; "
        f"once that is fixed, the checkpoint {checkpoint} from step 2 is intact: run again with the same --save "
        "to continue from it")
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    assert not target.exists() and not list(tmp_path.rglob("*.part"))  # no half-saved network, no leftovers

    monkeypatch.setattr(style_library, "write_atomically", disk.real)  # space freed
    done, frames, _ = train(context(bundled), target, steps=5, dataset=str(content_folder), checkpoint_every=1)
    assert done.metrics["resumed_from"] == 2 and [f.step for f in frames] == [3, 4, 5]
    assert torch.load(target, weights_only=True)["info"]["steps"] == 5


def test_a_full_disk_at_the_first_checkpoint_says_none_was_kept(bundled, cache, content_folder, tmp_path,
                                                                 monkeypatch):
    FullDisk(monkeypatch, fail_from=1)
    with pytest.raises(ConvScopeError, match=r"at step 1 \(no space left on device\).*no checkpoint was written "
                                             r"before it: run again to start over"):
        train(context(bundled), tmp_path / "candy.pt", steps=3, dataset=str(content_folder), checkpoint_every=1)
    assert not checkpoint_path(tmp_path / "candy.pt").exists()


def test_a_full_disk_at_the_final_save_keeps_every_step_in_the_checkpoint(bundled, cache, content_folder, tmp_path,
                                                                           monkeypatch):
    target = tmp_path / "candy.pt"
    disk = FullDisk(monkeypatch, fail_from=2)  # the closing checkpoint lands; the network's file does not
    with pytest.raises(ConvScopeError) as caught:
        train(context(bundled), target, steps=3, dataset=str(content_folder), checkpoint_every=0)
    assert str(caught.value) == (
        f"could not save the trained network to {target} (no space left on device); the checkpoint "
        f"{checkpoint_path(target)} holds all 3 steps: once that is fixed, run again with the same --save to save it")
    assert not target.exists() and torch.load(checkpoint_path(target), weights_only=True)["step"] == 3
    monkeypatch.setattr(style_library, "write_atomically", disk.real)
    done, frames, _ = train(context(bundled), target, steps=3, dataset=str(content_folder), checkpoint_every=0)
    assert frames == [] and done.metrics["trained_steps"] == 0 and target.is_file()


def test_a_full_disk_mid_run_is_one_line_from_the_command_line(capsys, tmp_path, monkeypatch, cache):
    FullDisk(monkeypatch, fail_from=2)
    code, out, err = cli_train(capsys, tmp_path / "candy.pt", "--checkpoint-every", "1")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "at step 2 (no space left on device)" in lines[0] and "from step 1 is intact" in lines[0]
