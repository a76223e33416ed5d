"""torchvision's ImageNet classifiers, with their pretrained weights fetched on demand.

The weights are cached exactly where torchvision itself caches them
(``<torch hub dir>/checkpoints/<file name from the URL>``), so a file torchvision has
already downloaded is reused, and a file copied there by hand is found. Downloads are
our own rather than torch.hub's so that they report progress, can be cancelled, never
leave a partial file under the final name, and fail with a message saying how to get
the file some other way. Every weights file is read with ``weights_only=True``.

Layer presets: "early" sits about a quarter of the way in (edges, colours, simple
textures), "middle" at the stage boundary nearest half the network's depth (textures and
patterns), "late" on the last convolutional stage (object parts; the usual Grad-CAM
layer). Each names an activation, or a block whose output is one; inverted-bottleneck
networks (MobileNet, EfficientNet) name the expansion activation inside a block, as the
bundled EfficientNet-Lite0 does, since a block's own output is linear. ResNet and ConvNeXt
name whole stages: a ResNet block calls one ``relu`` module twice, so a hook on it sees
the wrong call, and ConvNeXt's inner activations are channels-last.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from engine.core.errors import ModelLoadError, WeightsMissingError
from engine.core.jobs import CancelToken
from engine.core.part_files import create_part_file, remove_stale_parts
from engine.core.torch_files import read_state_dict
from engine.models.preprocessing import Preprocessing
from engine.models.model import ModelSpec, ProgressCallback, without_inplace
from engine.models.state_dicts import load_state_dict

DOWNLOAD_TIMEOUT_S = 30  # socket timeout for connecting and for each read
DOWNLOAD_CHUNK_SIZE = 1 << 20  # bytes read between two cancel checks
PROGRESS_INTERVAL_S = 0.1  # at most this often a progress report while downloading
MEGABYTE = 1 << 20  # torchvision's file sizes are in MiB, labelled "MB"; match them
# torch.hub names weights files "<name>-<first hex digits of their sha256>.<ext>".
HASH_PREFIX_PATTERN = re.compile(r"-([a-f0-9]+)\.")
# Errors that mean the download server could not be reached or stopped answering.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)

# torchvision's googlenet() builds a different network when it loads pretrained weights: it
# re-normalises the input inside the model (transform_input), and drops the auxiliary
# classifiers that the weights file still holds. Build it, and load it, the same way.
_PRETRAINED_BUILD_ARGS = {"googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False}}
_UNUSED_WEIGHT_PREFIXES = {"googlenet": ("aux1.", "aux2.")}


def default_weights(name: str) -> WeightsEnum:
    """The torchvision weights a zoo model loads unless given a weights file."""
    return get_model_weights(name).DEFAULT


def _zoo_spec(name: str, title: str, early: str, middle: str, late: str, fixed: bool = False) -> ModelSpec:
    """A ModelSpec whose preprocessing and figures come from the default weights' metadata;
    ``fixed``: the model takes its crop size only (torchvision's ViT checks it)."""
    weights = default_weights(name)
    transforms = weights.transforms()
    accuracy = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    file_size = weights.meta.get("_file_size")
    figures = [f"ImageNet top-1 {accuracy:.1f}%" if accuracy else "ImageNet weights"]
    if file_size:
        figures.append(f"{file_size:.0f} MB download")
    return ModelSpec(
        name=name,
        description=f"{title}; {', '.join(figures)}",
        source="torchvision",
        # Our images are scaled, not cropped, so the model sees them at its crop size.
        preprocessing=Preprocessing(
            size=transforms.crop_size[0], mean=tuple(transforms.mean), std=tuple(transforms.std),
            fixed_size=(transforms.crop_size[0], transforms.crop_size[0]) if fixed else None,
        ),
        layer_presets=(("early", early), ("middle", middle), ("late", late)),
    )


ZOO_SPECS: list[ModelSpec] = [
    # features: relu1..relu5 at 1, 4, 7, 9, 11; too shallow for "a quarter in", so relu2.
    _zoo_spec("alexnet", "AlexNet (2012): the network that started it, large early filters",
              "features.4", "features.7", "features.11"),
    # relu2_2, relu3_3 (7th of 13 convs), relu5_3.
    _zoo_spec("vgg16", "VGG-16 (2014): plain stacks of 3x3 convolutions, a classic for feature visualisation",
              "features.8", "features.15", "features.29"),
    # relu2_2, relu3_4 (8th of 16 convs), relu5_4.
    _zoo_spec("vgg19", "VGG-19 (2014): deeper VGG, the usual network for style transfer",
              "features.8", "features.17", "features.35"),
    # Stage outputs; layer2 ends block 4 of 8.
    _zoo_spec("resnet18", "ResNet-18 (2015): small residual network, quick on a CPU",
              "layer1", "layer2", "layer4"),
    # Stage outputs; layer2 ends block 7 of 16.
    _zoo_spec("resnet50", "ResNet-50 (2015): residual network with bottleneck blocks",
              "layer1", "layer2", "layer4"),
    # Inception modules: 3a, 4c (5th of 9), 5b; the layers of the feature-visualisation papers.
    _zoo_spec("googlenet", "GoogLeNet / Inception v1 (2014): the network of DeepDream and feature visualisation",
              "inception3a", "inception4c", "inception5b"),
    # Fire modules fire3, fire5 (4th of 8), fire9; features.12 is the last before the classifier conv.
    _zoo_spec("squeezenet1_1", "SqueezeNet 1.1 (2016): tiny and fast, 1.2 M parameters",
              "features.4", "features.7", "features.12"),
    # Expansion activations of the last blocks of the 24- and 40-channel stages (blocks 3 and 6
    # of 15), then the activation of the final 960-channel conv.
    _zoo_spec("mobilenet_v3_large", "MobileNetV3-Large (2019): mobile network with squeeze-and-excitation",
              "features.3.block.0.2", "features.6.block.0.2", "features.16.2"),
    # Expansion activations of the last blocks of the 24- and 80-channel stages (blocks 3 and 8
    # of 16), then the head conv's: the same places as the bundled EfficientNet-Lite0's presets.
    _zoo_spec("efficientnet_b0", "EfficientNet-B0 (2019): MBConv blocks with squeeze-and-excitation",
              "features.2.1.block.0.2", "features.4.2.block.0.2", "features.8.2"),
    # Ends of stages 1 and 2 (blocks 3 and 6 of 18), then stage 4.
    _zoo_spec("convnext_tiny", "ConvNeXt-T (2022): modern convnet with 7x7 depthwise convolutions and LayerNorm",
              "features.1", "features.3", "features.7"),
    # Encoder blocks 3 and 6 of 12, then the input of the last attention: the class token
    # reads the last block's patch tokens only through it (engine.anatomy.layer_choice).
    _zoo_spec("vit_b_16", "ViT-B/16 (2020): a vision transformer, 14x14 patches and a class token, 224 px only",
              "encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5",
              "encoder.layers.encoder_layer_11.ln_1", fixed=True),
    # Stages 1 and 3 (strides 4 and 16), then the final norm: channels-last maps throughout.
    _zoo_spec("swin_t", "Swin-T (2021): a transformer attending within shifted 7x7 windows, channels-last stages",
              "features.1", "features.5", "norm"),
]
ZOO_NAMES = tuple(spec.name for spec in ZOO_SPECS)


def build_architecture(name: str) -> nn.Module:
    """The network ``name`` with random weights, laid out as its pretrained weights expect."""
    _check_zoo_name(name)
    # torchvision's activations work in place; hooks need them out of place (without_inplace).
    return without_inplace(get_model(name, weights=None, **_PRETRAINED_BUILD_ARGS.get(name, {})))


def cached_weights_path(name: str) -> Path:
    """Where the default weights of ``name`` are cached: where torch.hub would put them."""
    filename = os.path.basename(default_weights(name).url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build_zoo_model(
    name: str,
    weights_path: str | os.PathLike | None = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[nn.Module, str]:
    """The network ``name`` with its weights, and a description of where they came from.

    The weights come from ``weights_path`` when given, else from torchvision's default
    weights, downloaded into the cache first if they are not there yet.
    """
    _check_zoo_name(name)
    if weights_path is not None:
        weights_file = Path(weights_path)
        state_dict = read_state_dict(weights_file)
        description = str(weights_file.resolve())
    else:
        weights_file = _cached_default_weights(name, progress, cancel)
        try:
            state_dict = read_state_dict(weights_file, advice="")
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}. Delete {weights_file} and it will be downloaded again") from None
        description = f"torchvision {default_weights(name)} ({weights_file.name})"
    unused_prefixes = _UNUSED_WEIGHT_PREFIXES.get(name, ())
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith(unused_prefixes)}
    model = build_architecture(name)
    load_state_dict(model, name, state_dict, weights_file)
    return model, description


def download_weights(
    url: str,
    destination: str | os.PathLike,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> None:
    """Download ``url`` to ``destination``, reporting progress and checking ``cancel``.

    The data goes to a temporary file beside ``destination``, renamed into place only
    once complete and verified, so the final name never holds a partial file. When the
    file name carries a sha256 prefix (torch.hub's "<name>-<hex>.pth"), the data must
    match it. Network failures raise the ``urllib``/``socket`` error; a hash mismatch
    raises ``ModelLoadError``; a cancel raises ``JobCancelled``. Progress fractions are
    0..1, or -1 while the total size is unknown.
    """
    destination = Path(destination)
    filename = destination.name
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(destination.parent, filename)  # what a killed earlier download left
    descriptor, temporary = create_part_file(destination)
    try:
        with os.fdopen(descriptor, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            digest = hashlib.sha256()
            received = 0
            last_report = float("-inf")
            while True:
                if cancel is not None:
                    cancel.check()
                now = time.monotonic()
                if progress is not None and now - last_report >= PROGRESS_INTERVAL_S:
                    progress(download_fraction(received, total), download_message(filename, received, total))
                    last_report = now
                chunk = response.read(DOWNLOAD_CHUNK_SIZE)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
            if received < total:  # the server hung up early without an error
                raise ConnectionError(f"the connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        _verify_hash_prefix(filename, digest.hexdigest())
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)  # gone already after a successful rename
    if progress is not None:
        progress(1.0, download_message(filename, received, received))


def _check_zoo_name(name: str) -> None:
    if name not in ZOO_NAMES:
        raise ModelLoadError(f"'{name}' is not a torchvision model ConvScope knows; known: {', '.join(ZOO_NAMES)}")


def _cached_default_weights(name: str, progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> Path:
    """The cached default weights of ``name``, downloaded first if need be."""
    path = cached_weights_path(name)
    if path.is_file():
        return path
    url = default_weights(name).url
    try:
        download_weights(url, path, progress, cancel)
    except NETWORK_ERRORS as exc:
        raise WeightsMissingError(
            f"The pretrained weights of {name} are not on this computer and could not be downloaded "
            f"({_network_failure(exc)}). The file {path.name} is "
            f"expected at {path}. On a machine with network access, download it from {url} and copy it "
            f'there, or pick the file with "File > Open weights file..." (or --weights FILE on the command line).',
            filename=path.name,
            expected_path=str(path),
            url=url,
        ) from None
    except OSError as exc:  # the cache folder cannot be written: permissions, full disk
        raise ModelLoadError(f"cannot save {path.name} in {path.parent}: {exc.strerror or exc}") from None
    return path


def _network_failure(exc: BaseException) -> str:
    # URLError wraps the socket error that says what happened ("Name or service not known").
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return str(reason).strip() or type(reason).__name__


def _verify_hash_prefix(filename: str, hex_digest: str) -> None:
    match = HASH_PREFIX_PATTERN.search(filename)
    if match and not hex_digest.startswith(match.group(1)):
        raise ModelLoadError(
            f"the download of {filename} is corrupt: its sha256 starts {hex_digest[:len(match.group(1))]}, "
            f"not {match.group(1)}. Try again"
        )


def download_fraction(received: int, total: int) -> float:
    return min(received / total, 1.0) if total else -1.0


def download_message(filename: str, received: int, total: int) -> str:
    if total:
        return f"{filename}: {received / MEGABYTE:.1f} of {total / MEGABYTE:.1f} MB"
    return f"{filename}: {received / MEGABYTE:.1f} MB"
