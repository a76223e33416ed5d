"""One Gatys step (forward, losses, backward) beside the PyTorch tutorial's implementation.

The reference is "Neural Transfer Using PyTorch" (pytorch.org/tutorials/advanced/
neural_style_tutorial.html), written out below with its structure kept: ContentLoss and
StyleLoss modules that record their loss and pass the input on, inserted after the named
layers of a sequential copy of VGG-19's ``features`` behind a Normalization module, the
copy trimmed after the last loss module, and its L-BFGS closure (clamp, zero_grad,
forward, weighted sum of the recorded losses, backward). Only the layer lists differ from
the tutorial's defaults: both sides use ConvScope's VGG-19 defaults, Gatys et al.'s
conv1_1..conv5_1 for style and conv4_2 for content (the rectified outputs, which the
tutorial's naming calls relu_1, relu_3, relu_5, relu_9, relu_13 and relu_10).

Both run on one VGG-19 with random weights (no download offline; the time of a step does
not depend on the weights), the same content and style pictures, and are timed
interleaved in one process. Both stop the forward after relu5_1 (the tutorial trims its
copy there) and keep their targets from set-up. Ours is faster where the work is: the
features run channels-last, which oneDNN's convolutions and max-pooling take without
reordering, and the Grams (a tenth of the step) read those features without a copy and
use their symmetry in the backward pass (``engine.style.gram._Gram``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.memory import keep_freed_memory
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel
from engine.models.zoo import build_architecture
from engine.style.perceptual import Features, PerceptualLoss, gram_targets, perceptual_layers

from bench.common import Row, median_times_interleaved

SIZES = (512, 256)
REPEATS = {512: 5, 256: 9}
TUTORIAL_STYLE = ["relu_1", "relu_3", "relu_5", "relu_9", "relu_13"]  # features.1, 6, 11, 20, 29
TUTORIAL_CONTENT = ["relu_10"]  # features.22
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- the tutorial's implementation ------------------------------------------------------------
class ContentLoss(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target.detach()

    def forward(self, input):
        self.loss = F.mse_loss(input, self.target)
        return input


def tutorial_gram_matrix(input):
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature):
        super().__init__()
        self.target = tutorial_gram_matrix(target_feature).detach()

    def forward(self, input):
        G = tutorial_gram_matrix(input)
        self.loss = F.mse_loss(G, self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


def get_style_model_and_losses(cnn, normalization_mean, normalization_std, style_img, content_img,
                               content_layers, style_layers):
    normalization = Normalization(normalization_mean, normalization_std)
    content_losses = []
    style_losses = []
    model = nn.Sequential(normalization)
    i = 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu_{i}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool_{i}"
        elif isinstance(layer, nn.BatchNorm2d):
            name = f"bn_{i}"
        else:
            raise RuntimeError(f"Unrecognized layer: {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in content_layers:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{i}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{i}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[:(i + 1)]
    return model, style_losses, content_losses


def tutorial_closure(cnn, content_img, style_img, style_weight=1000000, content_weight=1):
    """The tutorial's ``run_style_transfer`` set-up and the closure its L-BFGS calls."""
    model, style_losses, content_losses = get_style_model_and_losses(
        cnn, IMAGENET_MEAN, IMAGENET_STD, style_img, content_img, TUTORIAL_CONTENT, TUTORIAL_STYLE)
    input_img = content_img.clone()
    input_img.requires_grad_(True)
    model.eval()
    model.requires_grad_(False)
    optimizer = torch.optim.LBFGS([input_img])

    def closure():
        with torch.no_grad():
            input_img.clamp_(0, 1)
        optimizer.zero_grad()
        model(input_img)
        style_score = 0
        content_score = 0
        for sl in style_losses:
            style_score += sl.loss
        for cl in content_losses:
            content_score += cl.loss
        style_score *= style_weight
        content_score *= content_weight
        loss = style_score + content_score
        loss.backward()
        return style_score + content_score

    return closure


# -- ours ---------------------------------------------------------------------------------------
def our_closure(model: LoadedModel, content_img, style_img):
    """The closure ``engine.style.perceptual.minimise`` runs for the style method."""
    layers = perceptual_layers(model, {})
    features = Features(model, layers.content + layers.style)
    content = {path: value for path, value in features.targets(content_img).items() if path in layers.content}
    style = gram_targets({path: value for path, value in features.targets(style_img).items() if path in layers.style})
    loss = PerceptualLoss(features, content=content, style=style, content_weight=1.0, style_weight=1000.0)
    pixels = content_img.clone().requires_grad_(True)

    def closure():
        pixels.grad = None
        total, _parts = loss(pixels)
        total.backward()
        return total

    return closure


def run() -> list[Row]:
    torch.set_num_threads(2)
    # As the engine does at start-up, for both sides: glibc keeps freed memory, so no step
    # pays for page faults on its activations (see engine/memory.py).
    keep_freed_memory()
    torch.manual_seed(0)
    module = build_architecture("vgg19").eval()
    module.requires_grad_(False)
    model = LoadedModel(name="vgg19", module=module, labels=[str(i) for i in range(1000)], weights="random",
                        preprocessing=Preprocessing(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    rows = []
    for size in SIZES:
        generator = torch.Generator().manual_seed(size)
        content = torch.rand(1, 3, size, size, generator=generator)
        style = torch.rand(1, 3, size, size, generator=generator)
        ours = our_closure(model, content, style)
        reference = tutorial_closure(module.features, content, style)
        ours_s, reference_s = median_times_interleaved([ours, reference], repeats=REPEATS[size])
        rows.append(Row(f"Gatys step, VGG-19, {size} px", ours_s, "s", ">= 1.2x the tutorial", reference=reference_s,
                        note="one L-BFGS closure: forward to relu5_1, 5 style + 1 content losses, backward; "
                             "reference: the PyTorch neural-style tutorial's loss modules"))
    return rows
