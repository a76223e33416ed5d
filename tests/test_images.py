"""Loading awkward image files, and writing results without ever leaving half a file.

Every bad file must end in an ``ImageLoadError`` whose message names the file and says
what is wrong with it; ``pytest.raises(ImageLoadError)`` lets any other exception type
through as a test error, so each refusal test also proves nothing else escapes.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from skimage import data

from engine.data import images
from engine.core.errors import ConvScopeError, ImageLoadError
from engine.data.images import load_image, save_png, write_atomically


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real, non-square photo (300 high, 451 wide): JPEG behaves on it as on user files."""
    return data.chelsea()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_raw_png(path: Path, width: int, height: int, *, bit_depth: int, color_type: int, rows) -> Path:
    """Write a PNG chunk by chunk, for what Pillow cannot write (16-bit RGB, huge sizes).

    ``rows`` yields each scanline's bytes without the filter byte; they are streamed
    through zlib so a huge image of zeros never exists in memory.
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )
    return path


def refusal(path: Path, **kwargs) -> str:
    """The message load_image gives for ``path``, checked to name the file."""
    with pytest.raises(ImageLoadError) as caught:
        load_image(path, **kwargs)
    message = str(caught.value)
    assert path.name in message, message
    return message


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if any image's pixels are decoded."""

    def refuse_to_decode(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)


def test_image_load_error_is_a_user_facing_error():
    assert issubclass(ImageLoadError, ConvScopeError)


# --------------------------------------------------------------------------- refusals


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are my notes, not a photo\n" * 20)
    assert "not an image" in refusal(path)


def test_truncated_jpeg_is_reported_as_truncated(tmp_path, photo):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(photo).save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "truncated" in refusal(cut)


def test_truncated_png_is_reported_as_truncated(tmp_path, photo):
    whole = tmp_path / "whole.png"
    Image.fromarray(photo).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "truncated" in refusal(cut)


def test_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    message = refusal(path)
    assert "empty" in message and "0 bytes" in message


def test_missing_file_is_reported_as_missing(tmp_path):
    assert "no such file" in refusal(tmp_path / "gone.png")


def test_folder_is_not_an_image_file(tmp_path):
    folder = tmp_path / "holiday.jpg"
    folder.mkdir()
    assert "folder" in refusal(folder)


def test_unreadable_file_says_it_cannot_be_read(tmp_path, photo, monkeypatch):
    # Simulated: file modes do not stop root, and the tests may run as root.
    path = tmp_path / "secret.png"
    Image.fromarray(photo).save(path)

    def permission_denied(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(images.Image, "open", permission_denied)
    message = refusal(path)
    assert "cannot be read" in message and "Permission denied" in message


# --------------------------------------------------------------------------- odd modes


def test_rgb_png_loads_unchanged(tmp_path, photo):
    path = tmp_path / "cat.png"
    Image.fromarray(photo).save(path)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert loaded.size == (451, 300) and loaded.original_size == (451, 300)
    assert loaded.path == str(path)
    assert loaded.notes == []
    np.testing.assert_array_equal(loaded.to_array(), photo)


def test_cmyk_jpeg_comes_back_close_to_the_rgb_original(tmp_path, photo):
    path = tmp_path / "print.jpg"
    Image.fromarray(photo).convert("CMYK").save(path, quality=95)
    with Image.open(path) as on_disk:
        assert on_disk.mode == "CMYK"
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert mean_abs_diff(loaded.to_array(), photo) < 6


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    # Columns k * 257 for k = 0..255 span the whole 16-bit range; clipping at 255 would
    # turn all but the first column white.
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(1, 256).repeat(4, axis=0)
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as on_disk:
        assert on_disk.mode == "I;16"
    pixels = load_image(path).to_array()
    assert pixels.shape == (4, 256, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[0, :, channel], np.arange(256))


def test_16_bit_rgb_png_is_rescaled_per_channel(tmp_path):
    # Pillow cannot write 16-bit RGB, so the file is assembled by hand.
    levels = np.arange(256, dtype=np.uint16) * 257
    rgb16 = np.stack([levels, levels[::-1], np.full(256, 128 * 257, np.uint16)], axis=-1)
    scanline = rgb16.astype(">u2").tobytes()
    path = write_raw_png(tmp_path / "scan16.png", 256, 3, bit_depth=16, color_type=2, rows=[scanline] * 3)
    pixels = load_image(path).to_array()
    assert pixels.shape == (3, 256, 3)
    np.testing.assert_array_equal(pixels[1, :, 0], np.arange(256))
    np.testing.assert_array_equal(pixels[1, :, 1], np.arange(256)[::-1])
    np.testing.assert_array_equal(pixels[1, :, 2], np.full(256, 128))


def test_palette_png_with_transparency_composites_onto_white(tmp_path):
    # Index 0 is a red that must never show: it is the transparent entry.
    indices = np.zeros((8, 8), np.uint8)
    indices[:, 4:] = 1
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 - 2) * 3)
    path = tmp_path / "icon.png"
    paletted.save(path, transparency=0)
    with Image.open(path) as on_disk:
        assert on_disk.mode == "P" and "transparency" in on_disk.info
    pixels = load_image(path).to_array()
    assert (pixels[:, :4] == 255).all()
    assert (pixels[:, 4:] == (0, 0, 255)).all()


def test_rgba_png_composites_onto_white(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)  # black everywhere
    rgba[:2, :, 3] = 0  # fully transparent: white shows through
    rgba[2:4, :, 3] = 255  # opaque black
    rgba[4:, :, 3] = 128  # half-covered: mid grey
    path = tmp_path / "overlay.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = load_image(path).to_array()
    assert (pixels[:2] == 255).all()
    assert (pixels[2:4] == 0).all()
    assert (np.abs(pixels[4:].astype(int) - 127) <= 1).all()


def test_la_image_composites_onto_white(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 60
    la[:, 2:, 1] = 255  # right half opaque grey 60, left half transparent
    path = tmp_path / "mask.png"
    Image.fromarray(la, "LA").save(path)
    pixels = load_image(path).to_array()
    assert (pixels[:, :2] == 255).all()
    assert (pixels[:, 2:] == 60).all()


def test_one_bit_image_becomes_black_and_white_rgb(tmp_path):
    checkerboard = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)
    path = tmp_path / "fax.png"
    Image.fromarray(checkerboard).convert("1").save(path)
    with Image.open(path) as on_disk:
        assert on_disk.mode == "1"
    pixels = load_image(path).to_array()
    assert pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(pixels[..., 0], np.where(checkerboard, 255, 0))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


# The EXIF orientation tag says how to turn the stored pixels to show them upright:
# 6 means "rotate 90 degrees clockwise", 8 "rotate 90 degrees counter-clockwise".
@pytest.mark.parametrize("orientation, quarter_turns", [(6, -1), (8, 1)])
def test_exif_rotated_jpeg_is_loaded_upright(tmp_path, photo, orientation, quarter_turns):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    Image.fromarray(photo).save(path, quality=95, exif=exif)

    loaded = load_image(path)
    assert loaded.size == (300, 451)  # width and height swapped
    assert loaded.original_size == (300, 451)
    upright = np.rot90(photo, k=quarter_turns)
    upside_down = np.rot90(photo, k=-quarter_turns)
    assert mean_abs_diff(loaded.to_array(), upright) < 4
    assert mean_abs_diff(loaded.to_array(), upside_down) > 20  # the turn went the right way


def test_animated_gif_shows_first_frame_with_a_note(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (10, 6), colour) for colour in colours]
    path = tmp_path / "spinner.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = load_image(path)
    assert (loaded.to_array() == colours[0]).all()
    assert any("3 frames" in note for note in loaded.notes), loaded.notes


# --------------------------------------------------------------------------- size limits


@pytest.fixture(scope="module")
def decompression_bomb(tmp_path_factory) -> Path:
    """A 30000x30000 1-bit PNG: about 100 KB on disk, 900 MP (gigabytes) decoded."""
    side = 30_000
    blank_row = bytes((side + 7) // 8)
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    return write_raw_png(path, side, side, bit_depth=1, color_type=0, rows=(blank_row for _ in range(side)))


def test_decompression_bomb_is_refused_by_size_without_decoding(decompression_bomb, no_pixel_decoding):
    assert decompression_bomb.stat().st_size < 1_000_000
    message = refusal(decompression_bomb)
    # Pillow's own bomb check fires inside Image.open and reports only the pixel count.
    assert "900 MP" in message
    assert f"{images.MAX_PIXELS / 1e6:.0f} MP" in message  # and what would be accepted


def test_image_over_max_pixels_is_refused_without_decoding(tmp_path, monkeypatch, photo):
    # Below Pillow's own bomb limit, ConvScope's MAX_PIXELS is what refuses the file.
    path = tmp_path / "poster.png"
    Image.fromarray(photo).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with monkeypatch.context() as patched:
        patched.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
        message = refusal(path)
    assert "451x300" in message and "MP" in message


def test_wide_image_is_scaled_to_max_side_with_a_note(tmp_path):
    wide = np.zeros((100, 5000, 3), np.uint8)
    wide[:, 2500:] = 200
    path = tmp_path / "panorama.png"
    Image.fromarray(wide).save(path)
    loaded = load_image(path)
    assert images.MAX_SIDE == 4096
    assert loaded.size == (4096, 82)
    assert loaded.original_size == (5000, 100)
    assert loaded.notes == ["scaled from 5000x100 to 4096x82"]
    pixels = loaded.to_array()
    assert (pixels[:, :2000] == 0).all() and (pixels[:, -2000:] == 200).all()


def test_max_side_is_read_when_loading(tmp_path, monkeypatch, photo):
    path = tmp_path / "cat.png"
    Image.fromarray(photo).save(path)
    monkeypatch.setattr(images, "MAX_SIDE", 200)
    loaded = load_image(path)
    assert loaded.size == (200, 133)
    assert loaded.original_size == (451, 300)
    assert loaded.notes == ["scaled from 451x300 to 200x133"]


# Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale; size and note must still tell the size
# on disk. At 2400 wide, the 1/8 draft alone already reaches max_side.
@pytest.mark.parametrize("width", [2000, 2400])
def test_large_jpeg_reports_its_size_on_disk(tmp_path, width):
    gradient = np.linspace(0, 255, width, dtype=np.uint8)
    big = np.stack([np.tile(gradient, (width // 2, 1))] * 3, axis=-1)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    loaded = load_image(path, max_side=300)
    assert loaded.size == (300, 150)
    assert loaded.original_size == (width, width // 2)
    assert loaded.notes == [f"scaled from {width}x{width // 2} to 300x150"]
    expected = np.asarray(Image.fromarray(big).resize((300, 150), Image.Resampling.LANCZOS))
    assert mean_abs_diff(loaded.to_array(), expected) < 3


# --------------------------------------------------------------------------- writing


def test_write_atomically_writes_the_whole_file(tmp_path):
    payload = os.urandom(3_000_000)
    path = tmp_path / "blob.bin"
    assert write_atomically(path, lambda handle: handle.write(payload)) == path
    assert path.read_bytes() == payload
    assert sorted(tmp_path.iterdir()) == [path]


def test_write_atomically_creates_missing_folders(tmp_path):
    path = tmp_path / "exports" / "today" / "blob.bin"
    write_atomically(path, lambda handle: handle.write(b"x"))
    assert path.read_bytes() == b"x"


def test_write_atomically_refuses_to_overwrite_without_permission(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="result.bin"):
        write_atomically(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"keep me"
    assert sorted(tmp_path.iterdir()) == [path]


def test_write_atomically_overwrites_when_allowed(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(b"old contents that are longer")
    write_atomically(path, lambda handle: handle.write(b"new"), overwrite=True)
    assert path.read_bytes() == b"new"
    assert sorted(tmp_path.iterdir()) == [path]


class DiskFull(Exception):
    pass


def _write_half_then_fail(handle):
    handle.write(b"half of the ")
    raise DiskFull("no space left")


def test_failed_write_leaves_no_file_behind(tmp_path):
    path = tmp_path / "result.bin"
    with pytest.raises(DiskFull):
        write_atomically(path, _write_half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(b"previous result")
    with pytest.raises(DiskFull):
        write_atomically(path, _write_half_then_fail, overwrite=True)
    assert path.read_bytes() == b"previous result"
    assert sorted(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_file_gets_ordinary_permissions(tmp_path):
    # Temporary files are private (0600); an exported figure must not stay that way.
    old_umask = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "figure.png", lambda handle: handle.write(b"x"))
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_png_round_trips_pixels(tmp_path, photo):
    path = save_png(tmp_path / "out.png", photo)
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), photo)
    assert sorted(tmp_path.iterdir()) == [path]


def test_save_png_refuses_to_overwrite_unless_asked(tmp_path, photo):
    path = save_png(tmp_path / "out.png", photo)
    inverted = 255 - photo
    with pytest.raises(FileExistsError):
        save_png(path, inverted)
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved), photo)
    save_png(path, inverted, overwrite=True)
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved), inverted)
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_photo_is_resized_for_a_model_once_and_each_caller_gets_its_own_copy():
    import gc

    from engine.models import preprocessing
    from engine.models.preprocessing import Preprocessing

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    bicubic = Preprocessing(size=100)
    first = bicubic.to_unit_tensor(photo)
    first.zero_()  # a method that writes on its input harms nobody else
    second = bicubic.to_unit_tensor(photo)
    expected = np.asarray(photo.resize((150, 100), Image.Resampling.BICUBIC, reducing_gap=3.0), np.float32) / 255
    np.testing.assert_array_equal(second[0].permute(1, 2, 0).numpy(), expected)
    nearest = Preprocessing(size=100, interpolation="nearest").to_unit_tensor(photo)
    assert not torch.equal(nearest, second)  # another model's resizing is its own
    assert Preprocessing(size=50).to_unit_tensor(photo).shape[-2:] == (50, 75)
    kept = id(photo)
    assert kept in preprocessing._MODEL_INPUTS
    del photo
    gc.collect()
    assert kept not in preprocessing._MODEL_INPUTS  # freed with the photo
