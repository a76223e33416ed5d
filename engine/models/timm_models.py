"""timm's image classifiers (``timm:NAME``): ConvNeXt-V2, RegNet, EfficientNetV2, ViT, Swin and
the rest of the ~1,800 pretrained models in PyTorch Image Models.

A name is timm's own: an architecture (``resnet50``), or an architecture and the tag of
one set of its pretrained weights (``resnet50.a1_in1k``); without a tag, timm's default
weights. Everything about a model comes from its pretrained config, as timm's own
``resolve_data_config`` reads it: the input size, mean, std and interpolation, and the
labels (ImageNet-1k's names for a 1,000-class model, the names of the ImageNet subset it
was trained on for 21k/22k/12k models, else numbered classes). The config's centre crop
is recorded but not applied: ConvScope scales the whole photo to the model's input size
(see ``engine.models.preprocessing``) so that every map lies over the picture.

Weights go through timm's own loading (``timm.create_model(..., pretrained=True)``), so
each model's checkpoint filter (original checkpoints re-laid out for timm's modules) and
classifier adaptation apply. Only the file is fetched here: from the Hugging Face hub into
its shared cache (``hf_hub_download``, where timm and every HF library look, so weights
one of them already downloaded are reused), with progress reported and a cancel check on
each chunk; older models that live at a plain URL go through the same download as
torchvision's (``engine.models.zoo.download_weights``). Every file is read without
unpickling: safetensors, or ``weights_only=True``.

Models that can take any input size are asked to (``dynamic_img_size``: ViT, DeiT, Swin
and others interpolate their position embeddings or attention masks for the photo's own
aspect ratio); a model that cannot gets exactly its config's size
(``Preprocessing.fixed_size``).
"""

from __future__ import annotations

import difflib
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from engine.core.errors import ModelLoadError, WeightsMissingError
from engine.core.jobs import CancelToken, JobCancelled
from engine.core.torch_files import read_state_dict
from engine.models.labels import generic_labels, imagenet_labels
from engine.core.errors import first_line
from engine.models.model import ProgressCallback, without_inplace
from engine.models.preprocessing import Preprocessing

PREFIX = "timm:"
# timm's weights file names on the hub, in the order timm itself tries them.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# The side a dynamic-size model is tried at, other than its own, to tell whether it really
# takes any size (some accept the keyword and still need their configured size).
_PROBE_SIDE = 160
# Side multiples a model's input may need, tried smallest first: any size, then patch sizes
# (8, 14, 16) and whole strides (32: a Swin's 4 x 8, 56: a 7 x 7 window at stride 8...).
_MULTIPLES = (1, 2, 4, 8, 14, 16, 28, 32, 56, 64, 112, 224)


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def timm_name(name: str) -> str:
    """The timm model name of a ``timm:NAME`` model name."""
    return name[len(PREFIX):].strip()


@dataclass(frozen=True)
class TimmEntry:
    """One pretrained timm classifier, as the Model menu lists it."""

    name: str  # architecture.tag, as timm.create_model takes it
    input_size: tuple[int, int]  # (height, width)
    classes: int
    hub_id: str  # where its weights are on the Hugging Face hub ("" for a plain URL)

    @property
    def architecture(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    @property
    def description(self) -> str:
        trained_on = _dataset_of(self.tag)
        size = f"{self.input_size[1]}x{self.input_size[0]}"
        return f"{trained_on}, {self.classes:,} classes, {size} px" if trained_on else f"{self.classes:,} classes, {size} px"

    def is_cached(self) -> bool:
        return cached_weights_file(self.name) is not None


@lru_cache(maxsize=1)
def timm_catalogue() -> tuple[TimmEntry, ...]:
    """Every pretrained timm image classifier (models whose weights end in class scores;
    feature extractors without a classifier, such as DINOv2's, are left out)."""
    import timm

    entries = []
    for name in timm.list_pretrained():
        config = _pretrained_config(name)
        if config is None or not config.get("num_classes"):
            continue
        input_size = tuple(config.get("input_size") or (3, 224, 224))[1:]
        entries.append(TimmEntry(name=name, input_size=(int(input_size[0]), int(input_size[1])),
                                 classes=int(config["num_classes"]), hub_id=config.get("hf_hub_id") or ""))
    return tuple(entries)


def name_matches(name: str, text: str) -> bool:
    """Whether a catalogue name holds every word of ``text`` (any case, anywhere in it):
    "convnext tiny" finds convnext_tiny.fb_in1k and convnextv2_tiny.fcmae_ft_in1k. The Model
    menu's list filters by the same rule (``gui.timm_dialog``)."""
    name = name.lower()
    return all(word in name for word in text.lower().split())


def cached_weights_file(name: str) -> Path | None:
    """The weights of timm model ``name`` if a download already put them on this computer."""
    config = _pretrained_config(name)
    if not config:
        return None
    if config.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        for filename in _hub_filenames(config):
            found = try_to_load_from_cache(config["hf_hub_id"], filename)
            if isinstance(found, str):
                return Path(found)
        return None
    if config.get("url"):
        path = _url_cache_path(config["url"])
        return path if path.is_file() else None
    return None


@dataclass
class TimmModel:
    module: nn.Module
    name: str  # the resolved architecture.tag
    preprocessing: Preprocessing
    labels: list[str]
    weights: str  # where the weights came from, for the export sidecar


def build_timm_model(name: str, weights_path: str | os.PathLike | None = None,
                     progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> TimmModel:
    """timm model ``name`` (``timm:`` prefix removed) with its pretrained weights, or with the
    state dict in ``weights_path`` (a fine-tuned copy, a file copied by hand)."""
    import timm

    resolved = _resolve_name(name)
    config = _pretrained_config(resolved) or {}
    if weights_path is not None:
        state_dict = read_state_dict(weights_path)
        description = str(Path(weights_path).resolve())
    else:
        if not config.get("hf_hub_id") and not config.get("url"):
            raise WeightsMissingError(f"timm has no pretrained weights for {resolved}; open a weights file for it with "
                                      f'"File > Open weights file..." (or --weights FILE on the command line)')
        weights_file = _pretrained_weights_file(resolved, config, progress, cancel)
        state_dict = _read_weights(weights_file)
        description = f"timm {resolved} ({config.get('hf_hub_id') or config.get('url')})"
    classes = _classes_in(state_dict, config)
    module = _create(timm, resolved, pretrained=True, state_dict=state_dict, num_classes=classes)
    preprocessing = preprocessing_of(module, config)
    return TimmModel(module=without_inplace(module), name=resolved, preprocessing=preprocessing,
                     labels=labels_of(module, config), weights=description)


def build_timm_untrained(name: str) -> TimmModel:
    """timm model ``name`` as ``build_timm_model`` gives it, its preprocessing and labels
    included, but with random weights: for a listing of its layers when its weights are
    not on this computer."""
    resolved = _resolve_name(name)
    config = _pretrained_config(resolved) or {}
    module = build_timm_architecture(resolved)
    return TimmModel(module=module, name=resolved, preprocessing=preprocessing_of(module, config),
                     labels=labels_of(module, config), weights="random (untrained)")


def build_timm_architecture(name: str, num_classes: int | None = None) -> nn.Module:
    """timm model ``name`` with random weights, laid out as ``build_timm_model`` builds it
    (for tests, and for weights files saved from it)."""
    import timm

    return without_inplace(_create(timm, _resolve_name(name), pretrained=False, num_classes=num_classes))


def preprocessing_of(module: nn.Module, config: dict) -> Preprocessing:
    """The model's input size, normalisation and interpolation from its pretrained config;
    the multiple its sides must be (a ViT's patch size), or a fixed input size when the
    model cannot take the photo's own aspect ratio."""
    height, width = (tuple(config.get("input_size") or (3, 224, 224)))[1:]
    multiple = _size_multiple(module, (int(height), int(width)))
    fixed = None if multiple else (int(height), int(width))
    return Preprocessing(size=int(min(height, width)), mean=tuple(config.get("mean") or (0.485, 0.456, 0.406)),
                         std=tuple(config.get("std") or (0.229, 0.224, 0.225)),
                         interpolation=config.get("interpolation") or "bicubic", fixed_size=fixed,
                         crop_pct=config.get("crop_pct"), multiple_of=multiple or 1)


def labels_of(module: nn.Module, config: dict) -> list[str]:
    """Class names: the config's own, ImageNet-1k's (torchvision's short names, as every other
    model here uses), or those of the ImageNet subset the model was trained on."""
    classes = int(getattr(module, "num_classes", 0) or config.get("num_classes") or 0)
    if config.get("label_names") and len(config["label_names"]) == classes:
        return list(config["label_names"])
    if classes == 1000:
        return imagenet_labels()
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(config) if config else None
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == classes:
            return [description.split(",")[0] for description in info.label_descriptions()]
    return generic_labels(classes)


# -- names -------------------------------------------------------------------------------------

def _resolve_name(name: str) -> str:
    """``name`` as architecture.tag; an unknown name is refused with the nearest known ones."""
    import timm

    name = name.strip()
    if not name:
        raise ModelLoadError('give a timm model name after "timm:", for example timm:resnet50 or timm:vit_base_patch16_224')
    architecture, _, tag = name.partition(".")
    if architecture not in timm.list_models():
        known = timm.list_models()
        close = difflib.get_close_matches(architecture, known, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; Model > timm model... lists them"
        raise ModelLoadError(f"timm has no model called '{architecture}'{hint}")
    config = _pretrained_config(name)
    if tag and config is None:
        tags = [entry.partition(".")[2] for entry in timm.list_pretrained(f"{architecture}.*")]
        raise ModelLoadError(f"timm has no weights tagged '{tag}' for {architecture}; "
                             f"its weights: {', '.join(tags) if tags else 'none'}")
    if config is not None and config.get("tag"):
        return f"{architecture}.{config['tag']}"
    return architecture


def _pretrained_config(name: str) -> dict | None:
    from timm.models import get_pretrained_cfg

    try:
        config = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    return config.to_dict() if config is not None else None


def _dataset_of(tag: str) -> str:
    """What a weights tag says the model learnt from, in words, in the order it learnt:
    'in1k' is "ImageNet-1k", 'in22k_ft_in1k' and 'fcmae_ft_in22k_in1k' are "ImageNet-22k
    then 1k", 'in1k_ft_in22k' (BEiT v2) is "ImageNet-1k then 22k"; "" without an ImageNet."""
    sizes = list(dict.fromkeys(re.findall(r"in(1|12|21|22)k", tag or "")))
    return f"ImageNet-{sizes[0]}k" + "".join(f" then {size}k" for size in sizes[1:]) if sizes else ""


# -- building ----------------------------------------------------------------------------------

def _create(timm, name: str, *, pretrained: bool, state_dict: dict | None = None, num_classes: int | None = None):
    """``timm.create_model``, asking for any input size where the model offers it."""
    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:
        # With the weights' own class count in the config too, timm keeps their classifier
        # instead of dropping it as one trained for other classes.
        overlay = {"state_dict": state_dict, **({"num_classes": num_classes} if num_classes is not None else {})}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        try:
            return timm.create_model(name, dynamic_img_size=True, **kwargs).eval()
        except TypeError as exc:  # the model has no such option
            if "dynamic_img_size" not in str(exc):
                raise
            return timm.create_model(name, **kwargs).eval()
    except (RuntimeError, KeyError, ValueError) as exc:
        if pretrained:
            raise ModelLoadError(f"the weights do not fit timm's {name}: {first_line(exc)}") from None
        raise ModelLoadError(f"timm could not build {name}: {first_line(exc)}") from None


def _classes_in(state_dict: dict[str, torch.Tensor], config: dict) -> int | None:
    """How many classes a weights file scores, where it differs from the config's (a model
    fine-tuned on the user's own classes): None to keep timm's."""
    classifier = config.get("classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    for head in names:
        bias = state_dict.get(f"{head}.bias")
        if bias is not None and bias.dim() == 1:
            return int(bias.shape[0]) if int(bias.shape[0]) != config.get("num_classes") else None
    return None


def _size_multiple(module: nn.Module, size: tuple[int, int]) -> int | None:
    """What the sides of the model's input must be a multiple of for it to take other sizes
    than its configured one (1: any size; a ViT's patch size; a Swin's patch size times its
    stages' strides), tried on non-square sizes on the meta device (shapes only, nothing
    computed); None when it takes its configured size only."""
    from engine.anatomy.twin import module_twin

    height, width = size
    try:
        twin = module_twin(module, lambda tensor: tensor.to("meta"))
    except Exception:  # noqa: BLE001 - a model that cannot be copied is taken at its own size
        return None

    def runs(rows: int, columns: int) -> bool:
        try:
            with torch.no_grad():
                twin(torch.zeros(1, 3, rows, columns, device="meta"))
            return True
        except Exception:  # noqa: BLE001 - any failure means it cannot take that size
            return False

    for multiple in _MULTIPLES:
        rows = max(multiple, round((height - _PROBE_SIDE // 2) / multiple) * multiple)
        columns = max(multiple, round((width + _PROBE_SIDE // 2 + 1) / multiple) * multiple)
        if multiple > 1 and (rows, columns) in ((height, width),):
            continue
        if runs(rows, columns) and runs(rows + multiple, columns + 3 * multiple):
            return multiple
    return None




# -- weights files -----------------------------------------------------------------------------

def _hub_filenames(config: dict) -> tuple[str, ...]:
    return (config["hf_hub_filename"],) if config.get("hf_hub_filename") else HUB_FILENAMES


def _url_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path, advice="")
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}. Delete {path} and it will be downloaded again") from None


def _pretrained_weights_file(name: str, config: dict, progress: Optional[ProgressCallback],
                             cancel: Optional[CancelToken]) -> Path:
    cached = cached_weights_file(name)
    if cached is not None:
        return cached
    if config.get("hf_hub_id"):
        return _download_from_hub(name, config, progress, cancel)
    from engine.models import zoo

    path = _url_cache_path(config["url"])
    try:
        zoo.download_weights(config["url"], path, progress, cancel)
    except zoo.NETWORK_ERRORS as exc:
        raise _missing(name, path.name, str(path), config["url"], zoo._network_failure(exc)) from None
    return path


def _download_from_hub(name: str, config: dict, progress: Optional[ProgressCallback],
                       cancel: Optional[CancelToken]) -> Path:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = config["hf_hub_id"]
    filenames = _hub_filenames(config)
    failure = ""
    for filename in filenames:
        try:
            # One look at the hub first, without retries: offline, hf_hub_download retries
            # with back-off for about 25 s (per file name) before it gives up, while the
            # person waits for the message that says what to do.
            get_hf_file_metadata(hf_hub_url(repo, filename))
            return Path(hf_hub_download(repo, filename, library_name="timm",
                                        tqdm_class=_progress_bar(progress, cancel, filename)))
        except JobCancelled:
            raise
        except LocalEntryNotFoundError as exc:  # the hub unreachable (a subclass of the next one)
            failure = first_line(exc)
            break
        except EntryNotFoundError:
            continue  # the repository holds the other format
        except Exception as exc:  # noqa: BLE001 - offline, refused, timed out: the hub's many errors say the same
            failure = first_line(exc)
            break
    url = f"{constants.ENDPOINT}/{repo}"
    expected = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    raise _missing(name, filenames[0], str(expected), url, failure or "the hub holds no weights file for it")


def _missing(name: str, filename: str, expected: str, url: str, reason: str) -> WeightsMissingError:
    return WeightsMissingError(
        f"The pretrained weights of timm's {name} are not on this computer and could not be downloaded ({reason}). "
        f"On a machine with network access, download {filename} from {url}, then open it here with "
        f'"File > Open weights file..." (or --weights FILE on the command line); timm caches it under {expected}.',
        filename=filename, expected_path=expected, url=url)


def _progress_bar(progress: Optional[ProgressCallback], cancel: Optional[CancelToken], filename: str):
    """A tqdm class for ``hf_hub_download`` that reports to ``progress`` and checks ``cancel``
    on every chunk: the hub writes into an ``.incomplete`` file, renamed only when whole, so
    a cancelled download leaves nothing under the final name."""
    from tqdm.auto import tqdm

    from engine.models.zoo import PROGRESS_INTERVAL_S, download_fraction, download_message  # as zoo downloads say

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # nothing on the terminal; the reports go to ``progress``
            super().__init__(*args, **kwargs)
            self.received = 0
            self.last_report = float("-inf")

        def update(self, n=1):
            if cancel is not None:
                cancel.check()
            self.received += n or 0
            total = self.total or 0
            now = time.monotonic()
            if progress is not None and (now - self.last_report >= PROGRESS_INTERVAL_S or self.received >= total > 0):
                progress(download_fraction(self.received, total), download_message(filename, self.received, total))
                self.last_report = now
            return super().update(n)

    return Bar
