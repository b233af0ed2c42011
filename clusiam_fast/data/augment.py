"""The paper's two-view augmentation recipe (SimSiam / MoCo v2), with torchvision on the CPU.

RandomResizedCrop(scale 0.2-1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 ->
grayscale with p 0.2 -> Gaussian blur (sigma 0.1-2) with p 0.5 -> horizontal
flip -> tensor -> normalise. Every random draw uses torch's generator, so
``torch.manual_seed`` before a call fixes its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T


@dataclass(frozen=True)
class Recipe:
    """The recipe's numbers (shared with the DALI pipeline so both follow one definition)."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    p_jitter: float = 0.8
    p_gray: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_blur: float = 0.5
    p_flip: float = 0.5


PAPER_RECIPE = Recipe()


class GaussianBlur:
    """PIL Gaussian blur with sigma drawn uniformly from ``sigma`` (PIL's radius is the std).

    As in the published SimSiam / CluSiam code; PIL's extended box blur costs the same
    for any sigma, unlike a fixed-size convolution kernel.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def paper_augmentation(
    crop_size: int, mean: Sequence[float], std: Sequence[float], recipe: Recipe = PAPER_RECIPE
) -> T.Compose:
    """One view of the recipe: PIL RGB image -> normalised float tensor (3, crop, crop)."""
    return T.Compose(
        [
            T.RandomResizedCrop(crop_size, scale=recipe.scale, ratio=recipe.ratio),
            T.RandomApply([T.ColorJitter(*recipe.jitter)], p=recipe.p_jitter),
            T.RandomGrayscale(p=recipe.p_gray),
            T.RandomApply([GaussianBlur(recipe.blur_sigma)], p=recipe.p_blur),
            T.RandomHorizontalFlip(p=recipe.p_flip),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class TwoViews:
    """Apply ``transform`` twice (independent draws): image -> (view1, view2)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"
