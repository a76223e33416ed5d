"""Animated export of an optimisation's frames: GIF through Pillow, MP4 through imageio-ffmpeg."""

import sys

import numpy as np
import pytest
from PIL import Image

from engine.view.animation import AnimationExportError, write_animation
from engine.core.errors import ConvScopeError


def moving_square(count=12, size=(33, 47)):
    """Frames that differ from one another: a white square travels over a changing colour."""
    frames = []
    for i in range(count):
        frame = np.zeros((*size, 3), np.uint8)
        frame[:] = (i * 15, 255 - i * 15, 100)
        frame[5:15, i * 3:i * 3 + 6] = 255
        frames.append(frame)
    return frames


def read_gif(path):
    with Image.open(path) as gif:
        frames, durations = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info["duration"])
        return frames, durations, gif.info.get("loop")


def test_a_gif_round_trips_every_frame_at_the_frame_rate(tmp_path):
    frames = moving_square()
    path = write_animation(frames, tmp_path / "dream.gif", fps=12.5)
    read, durations, loop = read_gif(path)
    assert len(read) == len(frames) and read[0].shape == frames[0].shape
    assert durations == [80] * len(frames) and loop == 0  # 12.5 fps, looping forever
    # Few colours: the shared palette holds them exactly; the first and last frames come back.
    np.testing.assert_array_equal(read[0], frames[0])
    np.testing.assert_array_equal(read[-1], frames[-1])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it


def test_a_gif_of_a_photo_keeps_its_colours_closely(tmp_path, chelsea):
    photo = np.asarray(chelsea.image.resize((120, 80)))
    frames = [np.clip(photo.astype(int) + shift, 0, 255).astype(np.uint8) for shift in (-40, 0, 40)]
    read, _, _ = read_gif(write_animation(frames, tmp_path / "photo.gif", fps=5))
    assert len(read) == 3
    for original, back in zip(frames, read):
        assert np.abs(back.astype(int) - original).mean() < 6  # 256 colours, dithered


def test_an_mp4_has_every_frame_and_even_sides(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = moving_square(count=15)  # 33 x 47: odd sides, which H.264 in yuv420p refuses
    path = write_animation(frames, tmp_path / "dream.mp4", fps=15)
    assert imageio_ffmpeg.count_frames_and_secs(str(path)) == (15, 1.0)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == (48, 34) and meta["fps"] == 15
    read = [np.frombuffer(data, np.uint8).reshape(34, 48, 3)[:33, :47] for data in reader]
    assert len(read) == 15
    assert np.abs(read[0].astype(int) - frames[0]).mean() < 6  # lossy, but the same picture
    assert np.abs(read[-1].astype(int) - frames[-1]).mean() < 6
    assert list(tmp_path.iterdir()) == [path]


def test_mp4_without_imageio_ffmpeg_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(AnimationExportError, match="needs the package imageio-ffmpeg.*GIF export works without it"):
        write_animation(moving_square(), tmp_path / "dream.mp4")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("frames, name, fps, message", [
    ([], "a.gif", 10, "there are no frames to export"),
    (moving_square(2) + [np.zeros((10, 10, 3), np.uint8)], "a.gif", 10, "frame 2 is 10x10 but frame 0 is 47x33"),
    ([np.zeros((8, 8), np.uint8)], "a.gif", 10, "frame 0 is not an HxWx3 uint8 picture"),
    ([np.zeros((8, 8, 3), np.float32)], "a.mp4", 10, "frame 0 is not an HxWx3 uint8 picture"),
    (moving_square(2), "a.avi", 10, "written as .gif or .mp4, not '.avi'"),
    (moving_square(2), "a", 10, "not 'no suffix'"),
    (moving_square(2), "a.gif", 0, "frame rate must be a positive number"),
])
def test_what_cannot_be_written_is_a_clear_error(tmp_path, frames, name, fps, message):
    with pytest.raises(AnimationExportError, match=message) as raised:
        write_animation(frames, tmp_path / name, fps=fps)
    assert isinstance(raised.value, ConvScopeError)  # the CLI and the GUI show its message as it is
    assert not list(tmp_path.iterdir())


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "dream.gif"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        write_animation(moving_square(), path)
    assert path.read_bytes() == b"keep me"
    write_animation(moving_square(), path, overwrite=True)
    assert len(read_gif(path)[0]) == 12
