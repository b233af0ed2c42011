"""DALI graph pieces the operator set lacks: PIL's blur kernel, a Gaussian kernel, HSV hue shift.

All work on per-sample nodes inside a pipeline definition (``sigma``, ``delta`` are
per-sample scalars drawn by ``fn.random``); kernels are built on the CPU and applied by
``fn.filter`` on either device (its filter input may live on the CPU for GPU data).
"""

from __future__ import annotations

import math

import numpy as np


def _fn():
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    return fn, types, dmath


def pil_blur_taps(sigma, sigma_max: float):
    """1-D kernel of PIL's ``GaussianBlur(radius=sigma)``: three passes of an extended box.

    Pillow splits the variance over 3 passes of a box of radius ``l + a`` (integer part
    ``l``, end taps weighted ``a``; Gwosdek et al., SSVM 2011), so the kernel's variance is
    exactly ``sigma**2`` but for small sigma its shape is far wider than a Gaussian's (sigma
    0.2 changes a noise image by 5 grey levels on average, a true Gaussian by none). The
    three boxes are composed here (two ``fn.filter`` passes over the box itself) into one
    kernel of ``6 (l + 1) + 1`` taps (7 for sigma < 0.87, else 13 up to sigma 2).
    """
    fn, types, dmath = _fn()
    l_max = int(math.floor((math.sqrt(4.0 * sigma_max**2 + 1.0) - 1.0) / 2.0))
    r1 = l_max + 1  # support radius of one box; the composed kernel reaches 3 * r1
    var = sigma * sigma * (1.0 / 3.0)  # variance per pass
    l = dmath.floor((dmath.sqrt(var * 12.0 + 1.0) - 1.0) * 0.5)
    a = (l * 2.0 + 1.0) * (l * (l + 1.0) - var * 3.0) / ((var - (l + 1.0) * (l + 1.0)) * 6.0)
    norm = 1.0 / (l * 2.0 + 1.0 + a * 2.0)

    def box(radius: int):
        d = dmath.abs(types.Constant(np.arange(-radius, radius + 1, dtype=np.float32)))
        return ((d <= l) + a * (d == l + 1.0)) * norm

    wide = fn.reshape(box(3 * r1), shape=[1, -1], layout="HW")
    narrow = fn.reshape(box(r1), shape=[1, -1])
    taps = fn.filter(fn.filter(wide, narrow, border="constant"), narrow, border="constant")
    radius = (l + 1.0) * 3.0  # drop the zero tails of narrow kernels
    return fn.slice(
        fn.reshape(taps, shape=[-1]),
        start=fn.cast(3.0 * r1 - radius, dtype=types.INT32),
        shape=fn.cast(radius * 2.0 + 1.0, dtype=types.INT32),
        axes=[0],
    )


def gaussian_taps(sigma, radius_cap: int):
    """Normalised 1-D Gaussian of ``2 r + 1`` taps, ``r = min(ceil(3 sigma), radius_cap)``.

    The kernel ``fn.gaussian_blur(sigma=...)`` would build; as two 1-D ``fn.filter`` passes
    it costs about a fifth of ``fn.gaussian_blur`` on the CPU (within one grey level).
    """
    fn, types, dmath = _fn()
    offsets = types.Constant(np.arange(-radius_cap, radius_cap + 1, dtype=np.float32))
    taps = dmath.exp(offsets * offsets * (-0.5 / (sigma * sigma)))
    radius = dmath.min(dmath.ceil(sigma * 3.0), float(radius_cap))
    taps = fn.slice(
        taps,
        start=fn.cast(radius_cap - radius, dtype=types.INT32),
        shape=fn.cast(radius * 2.0 + 1.0, dtype=types.INT32),
        axes=[0],
    )
    return taps / fn.reductions.sum(taps)


def separable_filter(img, taps, border: str):
    """``taps`` along W then along H of an HWC image (uint8 in, uint8 out, rounded)."""
    fn, _, _ = _fn()
    img = fn.filter(img, fn.reshape(taps, shape=[1, -1]), border=border)
    return fn.filter(img, fn.reshape(taps, shape=[-1, 1]), border=border)


def pil_hue_step(h):
    """torchvision turns PIL's 8-bit hue by ``int(h * 255)`` steps of 1/255 (truncated)."""
    _, _, dmath = _fn()
    steps = dmath.floor(dmath.abs(h) * 255.0) * ((h >= 0.0) * 2.0 - 1.0)
    return steps * (1.0 / 255.0)


def hsv_hue_shift(img, delta, gpu: bool = False):
    """Rotate the HSV hue of an HWC uint8 image by ``delta`` turns, keeping S and V (exact).

    Per pixel: V = max, C = max - min, hue from the max channel, shifted, then the
    standard HSV -> RGB ``f(n) = V - C clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 hue) mod 6``.
    """
    fn, types, dmath = _fn()
    if gpu:
        delta = delta.gpu()
    x = fn.cast(img, dtype=types.FLOAT)
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    v = dmath.max(dmath.max(r, g), b)
    chroma = v - dmath.min(dmath.min(r, g), b)
    inv = 1.0 / dmath.max(chroma, 1e-6)
    is_r = v == r
    is_g = (v == g) & (v != r)
    is_b = (v != r) & (v != g)
    hue = is_r * ((g - b) * inv) + is_g * ((b - r) * inv + 2.0) + is_b * ((r - g) * inv + 4.0)
    hue = hue + delta * 6.0
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = hue + n
        k = k - 6.0 * dmath.floor(k / 6.0)
        channels.append(v - chroma * dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0))
    out = fn.cast(dmath.clamp(fn.stack(*channels, axis=2), 0.0, 255.0), dtype=types.UINT8)  # rounds
    return fn.reshape(out, layout="HWC")  # arithmetic drops the layout; conditional branches must agree
