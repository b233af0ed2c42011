"""The CluSiam/SimSiam view augmentation as DALI graph operations, torchvision's semantics.

The numbers come from the trainer's :class:`~clusiam_fast.data.augment.Recipe`, the same
object its torchvision pipeline uses. One view of a decoded HWC uint8 image, in
torchvision's order::

    RandomResizedCrop(crop, scale=(0.2, 1), ratio=(3/4, 4/3))    fn.random_resized_crop (same sampler)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)        brightness/contrast passes in random
    RandomGrayscale(p=0.2)                                       order, then one 3x3 colour matrix
    RandomApply([GaussianBlur(sigma 0.1-2)], p=0.5)              PIL's kernel, two fn.filter passes
    RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)     fn.crop_mirror_normalize -> CHW

What is matched (torchvision on PIL images, as the trainer runs it):

* Factors as torchvision draws them: brightness, contrast, saturation ~ U(0.6, 1.4), hue
  ~ U(-0.1, 0.1), jitter applied with p 0.8, grayscale with p 0.2, ITU-R 601 luma.
* Brightness ``b x`` and contrast ``c x + (1 - c) mean_luma`` are separate uint8 passes in
  a random order per view, each clipped and truncated like PIL's ``Image.blend``, with
  PIL's rounded mean luma of the image as it is at that step. Without that, measured on
  PCam, DALI's views were 1.5 grey levels brighter on average and their spread 3 % lower.
* Saturation (blend with luma), hue and grayscale are linear maps fixing the grey axis;
  they act as one 3x3 matrix per view with one clip, where torchvision clips after each
  (the remaining difference: +1 grey level on average on PCam).
* Hue: torchvision shifts PIL's 8-bit HSV hue. ``hue_mode="hsv"`` does that exactly
  (float HSV, the shift truncated to PIL's 1/255 steps; mean abs. pixel difference 0.9
  grey levels from PIL's HSV rounding) with DALI arithmetic after the matrix: cheap on a
  GPU, but about 6 ms per jittered 224-px view on a CPU core (more than all the rest).
  ``hue_mode="linear"`` instead rotates colours about the grey axis by ``2 pi h`` inside
  the matrix (what DALI's ``fn.hsv`` does): free, but it keeps mean(R, G, B) where HSV
  keeps max(R, G, B), so on H&E it lowers the channel stds by about 2 % (4.0 grey levels
  mean abs. difference per pixel, 5.1 for no hue shift at all). The loader's default
  ``"auto"`` takes hsv on the GPU and linear on the CPU.
* Blur: the trainer's ``GaussianBlur`` is PIL's box approximation (see
  :func:`~clusiam_fast.data.dali_ops.pil_blur_taps`), reproduced tap for tap
  (``blur="pil"``, default); ``blur="gaussian"`` is a true Gaussian of
  ``2 ceil(3 sigma) + 1`` taps (at most ``blur_window``). Either way only the views that
  draw the blur run it (a DALI conditional splits the batch) and the window follows
  sigma (7 or 13 taps for PIL's kernel), instead of a fixed 23-px window on every view.

Conditionals also let views skip colour passes they did not draw (16 % of views run no
colour pass at all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .augment import PAPER_RECIPE, Recipe
from .dali_ops import gaussian_taps, hsv_hue_shift, pil_blur_taps, pil_hue_step, separable_filter

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") and torchvision's grayscale


def check_options(recipe: Recipe, hue_mode: str, blur: str, blur_window: int | None) -> None:
    """Validate the recipe numbers and the DALI-only options; errors name the argument."""
    if hue_mode not in ("linear", "hsv", "auto"):
        raise ValueError(f"hue_mode must be 'auto', 'linear' or 'hsv', got {hue_mode!r}")
    if blur not in ("pil", "gaussian"):
        raise ValueError(f"blur must be 'pil' or 'gaussian', got {blur!r}")
    for name in ("p_jitter", "p_gray", "p_blur", "p_flip"):
        value = getattr(recipe, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"recipe.{name} must be a probability in [0, 1], got {value}")
    if not 0.0 < recipe.scale[0] <= recipe.scale[1] <= 1.0:
        raise ValueError(f"recipe.scale must satisfy 0 < min <= max <= 1, got {recipe.scale}")
    if not 0.0 < recipe.blur_sigma[0] <= recipe.blur_sigma[1]:
        raise ValueError(f"recipe.blur_sigma must satisfy 0 < min <= max, got {recipe.blur_sigma}")
    if blur_window is not None and (blur_window < 1 or blur_window % 2 == 0):
        raise ValueError(f"blur_window must be a positive odd number, got {blur_window}")


def colour_basis() -> dict[str, np.ndarray]:
    """Constant 3x3 matrices whose per-view combination is the saturation/hue/grayscale map.

    ``P`` projects on luma (grayscale), ``G`` on the grey axis (mean of RGB), ``U`` is the
    cross-product matrix of the unit grey axis (the generator of rotations about it).
    """
    w = np.asarray(LUMA, dtype=np.float64)
    P = np.outer(np.ones(3), w)
    G = np.full((3, 3), 1.0 / 3.0)
    u = np.ones(3) / math.sqrt(3.0)
    U = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    basis = {"P": P, "G-P": G - P, "I-G": np.eye(3) - G, "P-G": P - G, "U": U, "PU": P @ U}
    return {k: v.astype(np.float32) for k, v in basis.items()}


def saturation_hue_gray(basis: dict[str, Any], s, cos_t, sin_t, gray):
    """``gray ? P R(t) S(s) : R(t) S(s)`` as a combination of ``basis`` (NumPy or DALI nodes).

    ``S(s) = P + s (I - P)`` blends with luma, ``R(t)`` rotates by ``t`` about the grey axis
    (Rodrigues: ``G + cos t (I - G) + sin t U``); as ``R P = P`` and ``P G = G`` the product
    expands into the terms below. ``sin_t=None`` means no rotation.
    """
    turn = (1.0 - gray) * basis["I-G"] + gray * basis["P-G"]
    M = basis["P"] + s * basis["G-P"] + (s * cos_t) * turn
    if sin_t is not None:
        M = M + (s * sin_t) * ((1.0 - gray) * basis["U"] + gray * basis["PU"])
    return M


def _fn():
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    return fn, types, dmath


def _as_float(node):
    fn, types, _ = _fn()
    return fn.cast(node, dtype=types.FLOAT)


def _on(node, gpu: bool):
    """A per-sample CPU scalar, moved next to GPU data when needed."""
    return node.gpu() if gpu else node


def _uniform(low: float, high: float):
    """Per-view ``U(low, high)``; a constant node when the range is empty (DALI rejects it)."""
    fn, _, _ = _fn()
    if high > low:
        return fn.random.uniform(range=(low, high))
    return fn.random.uniform(range=(0.0, 1.0)) * 0.0 + low


def _jitter_factor(apply, strength: float, identity: float):
    """torchvision's factor ``U(identity - strength, identity + strength)`` (multiplicative ones
    clipped at 0), or ``identity`` where the jitter is not applied (always a graph node)."""
    if strength <= 0:
        return apply * 0.0 + identity
    low = max(0.0, identity - strength) if identity == 1.0 else identity - strength
    return apply * (_uniform(low, identity + strength) - identity) + identity


def _luma_mean(img):
    """Per-view mean luma, rounded to an integer as PIL's ``ImageEnhance.Contrast`` does."""
    fn, _, dmath = _fn()
    rgb = fn.reductions.mean(img, axes=(0, 1))
    return dmath.floor(rgb[0] * LUMA[0] + rgb[1] * LUMA[1] + rgb[2] * LUMA[2] + 0.5)


def _scale_shift(img, scale, shift, gpu: bool):
    """``clip(floor(scale * x + shift))`` per view, uint8 -> uint8 (PIL's blend truncates).

    CPU: ``fn.brightness_contrast`` (vectorised; it rounds, hence the -0.5). GPU: arithmetic
    on GPU scalars, so a ``shift`` computed from the image on the GPU stays there.
    """
    fn, types, dmath = _fn()
    if not gpu:
        return fn.brightness_contrast(img, brightness=scale, brightness_shift=(shift - 0.5) * (1.0 / 255.0))
    out = dmath.clamp(img * scale.gpu() + (shift - 0.5), 0.0, 255.0)
    return fn.reshape(fn.cast(out, dtype=types.UINT8), layout="HWC")


def _colour(img, recipe: Recipe, hue_mode: str, gpu: bool):
    """RandomApply(ColorJitter) then RandomGrayscale (see the module docstring)."""
    fn, types, dmath = _fn()
    if recipe.p_jitter <= 0 and recipe.p_gray <= 0:
        return img
    brightness, contrast, saturation, hue = recipe.jitter
    apply = _as_float(fn.random.coin_flip(probability=recipe.p_jitter))
    gray = _as_float(fn.random.coin_flip(probability=recipe.p_gray))
    if recipe.p_jitter > 0 and (brightness > 0 or contrast > 0):
        b, c = _jitter_factor(apply, brightness, 1.0), _jitter_factor(apply, contrast, 1.0)
        keep = 1.0 - c  # contrast: c x + (1 - c) mean_luma
        brightness_first = fn.random.coin_flip(probability=0.5) > 0
        if apply > 0.5:
            if brightness_first:
                img = _scale_shift(img, b, 0.0, gpu)
                img = _scale_shift(img, c, _on(keep, gpu) * _luma_mean(img), gpu)
            else:
                img = _scale_shift(img, c, _on(keep, gpu) * _luma_mean(img), gpu)
                img = _scale_shift(img, b, 0.0, gpu)
    s = _jitter_factor(apply, saturation, 1.0)
    h = _jitter_factor(apply, hue, 0.0) if hue > 0 else None
    basis = {k: types.Constant(v) for k, v in colour_basis().items()}
    if h is not None and hue_mode == "linear":
        theta = h * (2.0 * math.pi)
        M = saturation_hue_gray(basis, s, dmath.cos(theta), dmath.sin(theta), gray)
    else:
        M = saturation_hue_gray(basis, s, 1.0, None, gray)
    if (apply + gray) > 0.5:
        # float product (coord_transform's own uint8 output costs twice as much), then clip
        # and floor like PIL's saturation blend (a grayscale-only view rounds, as convert("L"))
        mixed = fn.coord_transform(img, M=M, dtype=types.FLOAT)
        img = fn.brightness_contrast(mixed, brightness_shift=apply * (-0.5 / 255.0), dtype=types.UINT8)
    if h is not None and hue_mode == "hsv":
        if (apply * (1.0 - gray)) > 0.5:  # grayscale views have no hue left to turn
            img = hsv_hue_shift(img, pil_hue_step(h), gpu)
    return img


def _blur(img, recipe: Recipe, blur: str, blur_window: int | None):
    """Blur the views that draw it (p_blur); the others skip the filter entirely."""
    fn, _, _ = _fn()
    if recipe.p_blur <= 0:
        return img
    if fn.random.coin_flip(probability=recipe.p_blur):
        sigma = _uniform(*recipe.blur_sigma)
        if blur == "pil":
            img = separable_filter(img, pil_blur_taps(sigma, recipe.blur_sigma[1]), "clamp")  # PIL clamps
        else:
            cap = int(math.ceil(3.0 * recipe.blur_sigma[1]))
            cap = cap if blur_window is None else min(cap, (blur_window - 1) // 2)
            img = separable_filter(img, gaussian_taps(sigma, cap), "reflect_101")  # as torchvision
    return img


def augment_view(
    images,
    recipe: Recipe = PAPER_RECIPE,
    *,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: str = "float32",
    hue_mode: str = "linear",
    blur: str = "pil",
    blur_window: int | None = None,
    gpu: bool = False,
):
    """One augmented view (CHW, normalised, float32/float16) of decoded HWC uint8 RGB images.

    Steps run in torchvision's order. The colour passes come after the resize: run on the
    (often smaller) crop window they would be cheaper, but clipping before the resampling
    averages lowered brightened views' mean and spread by 2-3 % (measured on PCam).
    """
    fn, types, _ = _fn()
    img = fn.random_resized_crop(
        images,
        size=(crop_size, crop_size),
        random_area=recipe.scale,
        random_aspect_ratio=recipe.ratio,
        num_attempts=10,
        antialias=True,
        interp_type=types.INTERP_LINEAR,
    )
    img = _colour(img, recipe, hue_mode, gpu)
    img = _blur(img, recipe, blur, blur_window)
    mirror = fn.random.coin_flip(probability=recipe.p_flip) if recipe.p_flip > 0 else 0
    dtype = {"float32": types.FLOAT, "float16": types.FLOAT16}[out_dtype]
    return fn.crop_mirror_normalize(
        img,
        mirror=mirror,
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        output_layout="CHW",
        dtype=dtype,
    )
