"""How an optimised picture is represented: raw pixels, or a decorrelated Fourier spectrum.

The optimiser never touches the picture directly; it moves the ``params`` of an
``ImageParam`` and the picture is ``image()`` of them (N x 3 x H x W in 0..1, one picture
per batch item). Two representations, as in Lucent's ``param/``:

* ``PixelImage``: the params are the pixels. Plain gradient ascent in this space favours
  high frequencies (a 1-pixel checkerboard moves a CNN as much as a whole object), so it
  needs the priors of ``engine.optvis.regularisers`` to give pictures.
* ``FourierImage`` (Olah et al. 2017, "Feature Visualization", section "Preconditioning
  and parameterization"): the params are a spectrum scaled by 1/f, so every frequency
  starts equally easy to change, and three colour channels decorrelated with the square
  root of ImageNet's colour covariance, squashed into 0..1 by a sigmoid. Steps in this
  space look like natural-image changes, which is most of what makes the results legible.

Both can also be *set* to a picture (``set_image``): projections such as a periodic blur
rewrite the picture between steps whatever represents it.
"""

from __future__ import annotations

from typing import Protocol

import torch

# ImageNet's RGB covariance (0..1 pixels) as eigenvalues and eigenvectors, the "PCA lighting"
# statistics of Krizhevsky et al. 2012 as published in fb.resnet.torch (datasets/imagenet.lua).
IMAGENET_COLOUR_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_COLOUR_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                                (-0.5808, -0.0045, -0.8140),
                                (-0.5836, -0.6948, 0.4203))


def colour_correlation_sqrt() -> torch.Tensor:
    """S = U sqrt(Lambda), a square root of the covariance (S S^T = U Lambda U^T = Cov).

    An eigenvector's sign is arbitrary; each column is flipped so that its red entry is
    positive, which makes the first column "brighter" and reproduces Lucid's
    ``color_correlation_svd_sqrt`` (printed to two decimals) within 0.01.
    """
    vectors = torch.tensor(IMAGENET_COLOUR_EIGENVECTORS, dtype=torch.float64)
    vectors = vectors * torch.sign(vectors[0])
    return vectors * torch.tensor(IMAGENET_COLOUR_EIGENVALUES, dtype=torch.float64).sqrt()


def _normalised_colour_matrix() -> torch.Tensor:
    """S divided by its largest column norm, so that a unit step along the main colour axis
    stays a unit step (Lucid's ``color_correlation_normalized``)."""
    sqrt = colour_correlation_sqrt()
    return (sqrt / sqrt.norm(dim=0).max()).float()


COLOUR_MATRIX = _normalised_colour_matrix()  # 3 x 3: latent colour -> RGB (before the sigmoid)


def decorrelate_colour(latent: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W independent colour channels -> correlated RGB (still unbounded)."""
    return torch.einsum("rc,nchw->nrhw", COLOUR_MATRIX.to(latent), latent)


def correlate_colour(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse of ``decorrelate_colour``."""
    return torch.einsum("rc,nchw->nrhw", torch.linalg.inv(COLOUR_MATRIX.double()).to(rgb), rgb)


class ImageParam(Protocol):
    params: list[torch.Tensor]  # the leaves the optimiser updates

    def image(self) -> torch.Tensor: ...  # N x 3 x H x W in 0..1, differentiable in params

    def set_image(self, image: torch.Tensor) -> None: ...  # params that give this picture

    def constrain(self) -> None: ...  # keep params valid after an optimiser step


class PixelImage:
    """The picture is the params, kept in 0..1 by clamping after every step (projected
    gradient ascent: a clamp inside the graph would stop the gradient at 0 and 1)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels.detach().clone().clamp_(0, 1).requires_grad_(True)
        self.params = [self.pixels]

    @classmethod
    def random(cls, shape: tuple[int, int, int, int], generator: torch.Generator, sd: float = 0.01,
               device: torch.device | str = "cpu") -> "PixelImage":
        """Mid-grey plus a little noise (the noise makes the items of a batch differ)."""
        return cls((0.5 + sd * torch.randn(shape, generator=generator)).to(device))

    def image(self) -> torch.Tensor:
        return self.pixels

    def set_image(self, image: torch.Tensor) -> None:
        with torch.no_grad():
            self.pixels.copy_(image.clamp(0, 1))

    def constrain(self) -> None:
        with torch.no_grad():
            self.pixels.clamp_(0, 1)


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """1 / max(f, 1/max(h, w))^decay_power for each frequency of rfft2's half spectrum
    (f in cycles per pixel); the floor keeps the constant term finite."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    frequency = (fx.pow(2) + fy.pow(2)).sqrt()
    return (1.0 / frequency.clamp(min=1.0 / max(height, width)).pow(decay_power)).float()


class FourierImage:
    """image = sigmoid(decorrelate(irfft2(scale * spectrum) / 4)), per batch item.

    ``spectrum`` holds the real and imaginary parts of rfft2 coefficients (N x 3 x H x
    W//2+1 x 2). irfft2 uses the orthonormal norm, so a white-noise spectrum of standard
    deviation sd gives pixels of about sd times the scale; the 4 is Lucid's constant that
    keeps the start from saturating the sigmoid.
    """

    MAGIC = 4.0

    def __init__(self, spectrum: torch.Tensor, size: tuple[int, int], decay_power: float = 1.0) -> None:
        self.height, self.width = size
        self.scale = spectrum_scale(self.height, self.width, decay_power).to(spectrum.device)[None, None, :, :, None]
        self.spectrum = spectrum.detach().clone().requires_grad_(True)
        self.params = [self.spectrum]

    @classmethod
    def random(cls, shape: tuple[int, int, int, int], generator: torch.Generator, sd: float = 0.01,
               decay_power: float = 1.0, device: torch.device | str = "cpu") -> "FourierImage":
        batch, channels, height, width = shape
        spectrum = sd * torch.randn((batch, channels, height, width // 2 + 1, 2), generator=generator)
        return cls(spectrum.to(device), (height, width), decay_power)

    def latent(self) -> torch.Tensor:
        """The decorrelated, unbounded picture before colour mixing and the sigmoid."""
        coefficients = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        return torch.fft.irfft2(coefficients, s=(self.height, self.width), norm="ortho") / self.MAGIC

    def image(self) -> torch.Tensor:
        return torch.sigmoid(decorrelate_colour(self.latent()))

    def set_image(self, image: torch.Tensor, eps: float = 1e-3) -> None:
        """Invert every stage: logit, colour correlation, rfft2, the 1/f scale. Exact for any
        picture strictly inside 0..1 (values are kept eps away from 0 and 1, where the logit
        is infinite)."""
        with torch.no_grad():
            unit = image.to(self.spectrum).clamp(eps, 1 - eps)
            latent = correlate_colour(torch.logit(unit)) * self.MAGIC
            coefficients = torch.fft.rfft2(latent, norm="ortho")
            self.spectrum.copy_(torch.view_as_real(coefficients) / self.scale)

    def constrain(self) -> None:
        pass


PARAMETERISATIONS = ("pixel", "fourier")


def make_image_param(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator,
                     device: torch.device | str = "cpu", sd: float = 0.01, decay_power: float = 1.0) -> ImageParam:
    """A random starting picture of ``shape`` (N x 3 x H x W) in the named parameterisation."""
    if kind == "pixel":
        return PixelImage.random(shape, generator, sd=sd, device=device)
    if kind == "fourier":
        return FourierImage.random(shape, generator, sd=sd, decay_power=decay_power, device=device)
    raise ValueError(f"unknown parameterisation '{kind}'; use one of {', '.join(PARAMETERISATIONS)}")

