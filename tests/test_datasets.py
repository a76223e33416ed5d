"""Listing folders of images, the built-in datasets, and decoding batches in the background."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from engine.data.datasets import (
    Dataset,
    DatasetItem,
    batch_to_input,
    digits_dir,
    iter_batches,
    load_square,
    open_dataset,
    square_box_to_image,
    square_pixels,
)
from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import CancelToken
from engine.models.preprocessing import Preprocessing
from engine.data.samples import sample_paths


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))


def save(path: Path, array: np.ndarray, size: tuple[int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    image.save(path)
    return path


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """cat/ and dog/ subfolders of real photos, one nested deeper, plus things to ignore."""
    root = tmp_path / "photos"
    save(root / "cat" / "chelsea.png", data.chelsea(), (90, 60))
    save(root / "cat" / "older" / "chelsea2.jpg", data.chelsea(), (60, 40))
    save(root / "dog" / "coffee.png", data.coffee(), (60, 40))
    save(root / "astronaut.png", data.astronaut(), (64, 64))
    save(root / ".hidden" / "secret.png", data.astronaut(), (16, 16))
    save(root / "cat" / ".thumb.png", data.astronaut(), (16, 16))
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


# --------------------------------------------------------------------------- listing


def test_folder_lists_images_recursively_with_labels_from_first_level_subfolders(photo_folder):
    dataset = open_dataset(photo_folder)
    relative = [os.path.relpath(item.path, photo_folder).replace(os.sep, "/") for item in dataset.items]
    assert relative == ["astronaut.png", "cat/chelsea.png", "cat/older/chelsea2.jpg", "dog/coffee.png"]
    assert dataset.labels == [None, "cat", "cat", "dog"]
    assert dataset.classes == ["cat", "dog"]
    assert dataset.name == "photos" and dataset.root == photo_folder.resolve()
    assert len(dataset) == 4 and dataset[1] is dataset.items[1]
    for item in dataset.items:
        assert os.path.isabs(item.path)
        stat = os.stat(item.path)
        assert (item.size, item.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert dataset.failures == []


def test_listing_is_lazy_and_frozen(photo_folder):
    item = open_dataset(photo_folder).items[0]
    assert isinstance(item, DatasetItem) and not hasattr(item, "__dict__")  # paths and stat only
    with pytest.raises(AttributeError):
        item.path = "elsewhere"


def test_flat_folder_has_no_labels(tmp_path):
    for name in ("b.png", "a.png"):
        save(tmp_path / "flat" / name, data.camera(), (32, 32))
    dataset = open_dataset(str(tmp_path / "flat"))
    assert [Path(p).name for p in dataset.paths] == ["a.png", "b.png"]
    assert dataset.labels == [None, None] and dataset.classes == []


@pytest.mark.parametrize("make, words", [
    (lambda root: root / "nowhere", "no such folder"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "holds no images"),
    (lambda root: save(root / "one.png", data.camera(), (8, 8)), "is a file"),
])
def test_unusable_folders_are_refused_clearly(tmp_path, make, words):
    target = make(tmp_path)
    with pytest.raises(MethodInputError, match=words) as caught:
        open_dataset(target)
    assert str(target.name) in str(caught.value)


def test_a_folder_of_non_images_is_empty(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(MethodInputError, match="holds no images"):
        open_dataset(tmp_path / "docs")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_do_not_hang(tmp_path):
    save(tmp_path / "set" / "a" / "x.png", data.camera(), (8, 8))
    os.symlink(tmp_path / "set", tmp_path / "set" / "a" / "loop")
    dataset = open_dataset(tmp_path / "set")
    assert [Path(p).name for p in dataset.paths] == ["x.png"]


# --------------------------------------------------------------------------- built-ins


def test_digits_dataset_has_the_1797_labelled_digits_drawn_faithfully():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dataset = open_dataset("digits")
    assert len(dataset) == 1797 and dataset.name == "digits"
    assert dataset.classes == [str(d) for d in range(10)]
    counts = {label: dataset.labels.count(label) for label in dataset.classes}
    assert counts == {str(d): int((digits.target == d).sum()) for d in range(10)}
    for item in dataset.items[::97]:
        index = int(Path(item.path).stem)
        assert item.label == str(digits.target[index])
        pixels = np.asarray(Image.open(item.path))
        assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
        expected = np.rint(digits.images[index] * 255 / 16)
        assert np.array_equal(pixels[::8, ::8], expected)  # each digit pixel is an 8x8 block
        assert np.array_equal(pixels, np.kron(expected, np.ones((8, 8))))
    assert Path(dataset.root) == digits_dir().resolve()


def test_digits_are_rendered_once():
    first = open_dataset("digits")
    stamp = os.stat(first.items[0].path).st_mtime_ns
    second = open_dataset("digits")
    assert second.items == first.items and os.stat(second.items[0].path).st_mtime_ns == stamp
    leftovers = [p for p in digits_dir().parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_samples_dataset_lists_the_scikit_image_photos():
    dataset = open_dataset("samples")
    expected = sorted(str(p.resolve()) for p in sample_paths().values())
    assert sorted(dataset.paths) == expected and len(dataset) >= 5
    assert all(label is None for label in dataset.labels)


# --------------------------------------------------------------------------- pixels


def test_images_are_stretched_to_the_square_without_cropping():
    left_red_right_blue = np.zeros((20, 80, 3), np.uint8)
    left_red_right_blue[:, :40, 0] = 255
    left_red_right_blue[:, 40:, 2] = 255
    square = square_pixels(Image.fromarray(left_red_right_blue), 16)
    assert square.shape == (16, 16, 3)
    assert (square[:, :7, 0] > 250).all() and (square[:, :7, 2] < 5).all()
    assert (square[:, 9:, 2] > 250).all() and (square[:, 9:, 0] < 5).all()
    # a box in the square lands on the picture by scaling each axis on its own
    assert square_box_to_image((4, 2, 8, 16), 16, (80, 20)) == (20.0, 2.5, 40.0, 20.0)


def test_batches_come_in_order_and_skip_corrupt_files_with_a_reason(photo_folder):
    (photo_folder / "dog" / "broken.jpg").write_bytes((photo_folder / "dog" / "coffee.png").read_bytes()[:300])
    (photo_folder / "dog" / "empty.png").write_bytes(b"")
    dataset = open_dataset(photo_folder)
    names = [Path(p).name for p in dataset.paths]
    assert names == ["astronaut.png", "chelsea.png", "chelsea2.jpg", "broken.jpg", "coffee.png", "empty.png"]
    wanted = [5, 4, 3, 2, 1, 0]
    batches = list(iter_batches(dataset, wanted, 24, batch_size=2, workers=2))
    assert [b.indices for b in batches] == [[4], [2], [1, 0]]
    assert [len(b.failures) for b in batches] == [1, 1, 0]
    failures = dict(f for b in batches for f in b.failures)
    assert set(failures) == {dataset[5].path, dataset[3].path}
    assert "empty" in failures[dataset[5].path] and "broken.jpg" in failures[dataset[3].path]
    for batch in batches:
        assert batch.pixels.dtype.is_floating_point is False and tuple(batch.pixels.shape[1:]) == (3, 24, 24)
        for j, index in enumerate(batch.indices):
            expected = load_square(dataset[index].path, 24)
            assert np.array_equal(batch.pixels[j].permute(1, 2, 0).numpy(), expected)


def test_a_batch_of_only_bad_files_is_empty_not_an_error(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not a png at all")
    dataset = open_dataset(tmp_path)
    (batch,) = list(iter_batches(dataset, [0, 1], 8, batch_size=4))
    assert batch.indices == [] and tuple(batch.pixels.shape) == (0, 3, 8, 8) and len(batch.failures) == 2
    assert all("not an image file" in message for _, message in batch.failures)


def test_cancel_stops_the_loader(photo_folder):
    dataset = open_dataset(photo_folder)
    cancel = CancelToken()
    batches = iter_batches(dataset, range(len(dataset)), 16, batch_size=1, cancel=cancel)
    next(batches)
    cancel.cancel()
    with pytest.raises(JobCancelled):
        next(batches)


def test_batch_to_input_normalises_like_the_model_preprocessing(photo_folder):
    dataset = open_dataset(photo_folder)
    (batch,) = list(iter_batches(dataset, [1], 32))
    preprocessing = Preprocessing(size=32)
    x = batch_to_input(batch.pixels, preprocessing)
    square = Image.fromarray(load_square(dataset[1].path, 32))
    reference = preprocessing.to_tensor(square)  # same size already: no resize happens
    assert x.dtype.is_floating_point and np.allclose(x.numpy(), reference.numpy(), atol=1e-6)


def test_dataset_is_a_plain_container():
    items = [DatasetItem("/a.png", "x", 1, 2), DatasetItem("/b.png", None, 3, 4)]
    dataset = Dataset(root=Path("/"), name="two", items=items)
    assert list(dataset) == items and dataset.labels == ["x", None] and dataset.classes == ["x"]


def test_a_large_jpeg_decodes_at_reduced_scale_with_the_same_result(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from engine.data.datasets import JPEG_MARGIN

    path = tmp_path / "big.jpg"
    Image.fromarray(data.astronaut()).resize((2048, 1536), Image.Resampling.BICUBIC).save(path, quality=95)
    decoded = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        decoded.append(image.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = load_square(path, 64).astype(np.float64)
    # 1/8 scale: the largest libjpeg offers that keeps JPEG_MARGIN x 64 px on the short side
    assert decoded == [(256, 192)] and 192 >= JPEG_MARGIN * 64 > 192 // 2
    full = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)
    assert fast.shape == (64, 64, 3)
    assert np.abs(fast - full).mean() < 3  # gray levels: the same picture, not merely a similar one


def test_resize_square_is_pillows_bicubic_within_a_grey_level_or_two():
    from engine.data.datasets import resize_square

    photo = data.astronaut()  # 512 x 512 RGB
    for size in (224, 37):  # down by 2.3x and by 14x
        ours = resize_square(photo, size).astype(int)
        pillow = np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BICUBIC), dtype=int)
        assert ours.shape == (size, size, 3)
        assert np.abs(ours - pillow).max() <= 2 and np.abs(ours - pillow).mean() < 0.05
    digit = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, np.ones((8, 8), np.uint8))  # 64 px grey, blocky
    ours = resize_square(digit, 224)
    pillow = np.asarray(Image.fromarray(digit).resize((224, 224), Image.Resampling.BICUBIC), dtype=int)
    assert ours.shape == (224, 224, 1) and np.abs(ours[:, :, 0].astype(int) - pillow).max() <= 2
    # a grey picture resized as one channel gives exactly the pixels of its RGB copy
    assert np.array_equal(ours[:, :, 0], resize_square(np.repeat(digit[:, :, None], 3, axis=2), 224)[:, :, 1])


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_the_quick_loader_agrees_with_the_safe_one(tmp_path, monkeypatch):
    """Common files skip load_image; they must come out as load_image + square_pixels makes them."""
    import engine.data.datasets
    from engine.data.images import load_image

    def not_for_common_files(path, *args, **kwargs):
        raise AssertionError(f"{path} should have taken the quick path")

    photo = Image.fromarray(data.chelsea()).resize((150, 100), Image.Resampling.BICUBIC)  # not square, not symmetric
    files = {"rgb.png": photo, "grey.png": photo.convert("L"), "photo.jpg": photo}
    for name, image in files.items():
        image.save(tmp_path / name)
    for value in range(1, 9):  # every EXIF orientation a camera writes
        photo.save(tmp_path / f"turned-{value}.jpg", exif=_exif_orientation(value), quality=95)
    photo.save(tmp_path / "turned-6.png", exif=_exif_orientation(6))  # a PNG's eXIf chunk counts too
    for path in sorted(tmp_path.iterdir()):
        safe = square_pixels(load_image(path).image, 48).astype(int)
        with monkeypatch.context() as patch:
            patch.setattr(engine.data.datasets, "load_image", not_for_common_files)
            quick = load_square(path, 48).astype(int)
        assert quick.shape == (48, 48, 3) and np.abs(quick - safe).max() <= 2, path.name
    # the orientation really was applied: a quarter turn is not the upright picture
    upright, turned = load_square(tmp_path / "turned-1.jpg", 48), load_square(tmp_path / "turned-6.jpg", 48)
    assert np.abs(upright.astype(int) - turned).mean() > 10
    grey = load_square(tmp_path / "grey.png", 48)
    assert np.array_equal(grey[:, :, 0], grey[:, :, 1]) and np.array_equal(grey[:, :, 0], grey[:, :, 2])
    assert np.abs(load_square(tmp_path / "turned-6.png", 48).astype(int) - turned).mean() < 2  # the JPEG, turned alike


def test_png_photos_decode_to_exactly_pillows_pixels():
    """PNGs take OpenCV's faster decoder; the pixels must not change with it."""
    from engine.data.datasets import _decode_png
    from engine.data.samples import sample_paths

    for name in ("chelsea", "camera"):  # RGB and grey
        with Image.open(sample_paths()[name]) as image:
            expected = np.array(image)
        assert np.array_equal(_decode_png(sample_paths()[name], grey=expected.ndim == 2), expected), name


def test_an_opencv_without_rgb_decoding_gives_the_same_pixels(monkeypatch):
    import cv2

    from engine.data.datasets import _decode_png
    from engine.data.samples import sample_paths

    monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)  # before OpenCV 4.10: BGR only
    with Image.open(sample_paths()["chelsea"]) as image:
        assert np.array_equal(_decode_png(sample_paths()["chelsea"], grey=False), np.array(image))


def test_a_png_cut_short_is_listed_with_a_reason_and_nothing_on_stderr(tmp_path, capfd):
    from engine.data.samples import sample_paths

    whole = Path(sample_paths()["chelsea"]).read_bytes()
    for fraction in (0.5, 0.99):
        (tmp_path / f"cut-{fraction}.png").write_bytes(whole[:int(len(whole) * fraction)])
    (batch,) = list(iter_batches(open_dataset(tmp_path), [0, 1], 16, batch_size=2))
    assert batch.indices == [] and len(batch.failures) == 2
    assert all("truncated" in message or "damaged" in message for _, message in batch.failures), batch.failures
    assert capfd.readouterr().err == ""  # libpng's own complaint never reaches the terminal


def test_unusual_files_still_go_through_the_safe_loader(tmp_path):
    """Transparency, 16-bit grey and palette files are converted by load_image's rules."""
    half = np.zeros((40, 40, 4), np.uint8)
    half[:, :20] = (255, 0, 0, 255)  # opaque red left, fully transparent right: white on loading
    Image.fromarray(half, "RGBA").save(tmp_path / "alpha.png")
    deep = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # I;16: rescaled to 8 bits, not clipped at 255
    Image.fromarray(data.chelsea()).convert("P").save(tmp_path / "palette.png")
    alpha = load_square(tmp_path / "alpha.png", 16)
    assert (alpha[:, :6] == (255, 0, 0)).all() and (alpha[:, 10:] == 255).all()
    ramp = load_square(tmp_path / "deep.png", 16)[:, :, 0]
    assert ramp[0, 0] < 20 and ramp[-1, -1] > 235
    palette = load_square(tmp_path / "palette.png", 16).astype(int)
    reference = square_pixels(Image.fromarray(data.chelsea()), 16).astype(int)
    assert np.abs(palette - reference).mean() < 8  # the same cat, through a 256-colour palette


def test_a_list_file_names_images_with_labels_after_a_tab_or_a_comma(tmp_path):
    for name in ("a.png", "b.png", "c,d.png", "e.png"):
        save(tmp_path / "pics" / name, data.camera(), (8, 8))
    elsewhere = save(tmp_path / "other" / "f.png", data.camera(), (8, 8))
    listed = tmp_path / "pics" / "list.csv"
    listed.write_text("path,label\n"  # column names, skipped
                      "a.png\tcat\n"
                      "# a comment\n\n"
                      "b.png,dog\n"
                      "c,d.png\n"  # a comma inside a name: the whole line names a file
                      '"e.png",bird\n'
                      f"{elsewhere}\n"
                      "a.png,again\n"  # listed twice: counted once, with its first label
                      "gone.png,cat\n")
    dataset = open_dataset(listed)
    assert [Path(p).name for p in dataset.paths] == ["a.png", "b.png", "c,d.png", "e.png", "f.png"]
    assert dataset.labels == ["cat", "dog", None, "bird", None]
    assert all(Path(p).is_absolute() for p in dataset.paths) and dataset.root == tmp_path.resolve()
    assert [(Path(p).name, "line 10 of list.csv" in why) for p, why in dataset.failures] == [("gone.png", True)]


def test_a_list_naming_no_readable_image_is_refused_clearly(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("missing.png\n")
    with pytest.raises(MethodInputError, match="names no image that can be read: missing.png"):
        open_dataset(listed)
