"""The three image operations tissue detection needs, in numpy: the same results as SciPy's and scikit-image's.

``import scipy.ndimage`` costs a quarter of a CPU second (it imports ``scipy.special``), paid by
every tiling process: more than tiling a small slide. These give what ``ndimage.gaussian_filter``
(mode ``nearest``; bit for bit: same kernel, same order of operations), ``skimage.filters.threshold_otsu``
(the same threshold) and ``ndimage.label`` (the same components; numbered otherwise) give;
``tests/tiling/test_tile_fast_paths.py`` compares them on real slides.
"""

from __future__ import annotations

import numpy as np


def gaussian_nearest(image: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma, mode="nearest")`` of a 2-D float32 image."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * x**2)
    weights = weights / weights.sum()
    out = image.astype(np.float32)
    for axis in (0, 1):  # as SciPy: one axis after the other, each result stored as float32
        pad = [(radius, radius) if a == axis else (0, 0) for a in (0, 1)]
        line = np.pad(out, pad, mode="edge").astype(np.float64)
        n = out.shape[axis]

        def shifted(k: int, line=line, n=n, axis=axis) -> np.ndarray:
            return line[k : k + n] if axis == 0 else line[:, k : k + n]

        total = shifted(radius) * weights[radius]
        for j in range(radius, 0, -1):  # SciPy's symmetric-kernel loop, outermost taps first
            total += (shifted(radius - j) + shifted(radius + j)) * weights[radius - j]
        out = total.astype(np.float32)
    return out


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """``skimage.filters.threshold_otsu(image)`` of a float image."""
    values = image.reshape(-1)
    if np.all(values == values[0]):
        return values[0]
    counts, edges = np.histogram(values, bins=nbins)
    counts = counts.astype(np.float32)
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centers[np.argmax(variance12)]


class Runs:
    """The connected components of a 2-D boolean image, as horizontal runs of True pixels.

    ``diagonal``: 8-connected (runs of neighbouring rows that touch by a corner join), else 4-connected.
    ``component[i]`` is the component (0-based) of run i; ``count`` the number of components.
    """

    def __init__(self, mask: np.ndarray, diagonal: bool) -> None:
        self.shape = mask.shape
        h, w = mask.shape
        steps = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        self.row, self.start = np.nonzero(steps == 1)
        _, self.end = np.nonzero(steps == -1)  # exclusive; same (row-major) order as the starts
        reach = 1 if diagonal else 0
        wide = w + 2  # a run's key: row * wide + column, so that one search spans every row
        ends, starts = self.row * wide + self.end + reach, self.row * wide + self.start
        above = (self.row - 1) * wide
        low = np.searchsorted(ends, above + self.start, side="right")  # first run above ending after my start
        high = np.searchsorted(starts, above + self.end + reach, side="left")  # past the last starting before my end
        counts = np.maximum(high - low, 0)
        mine = np.repeat(np.arange(len(self.row)), counts)
        first = np.repeat(low - np.cumsum(counts) + counts, counts)
        theirs = first + np.arange(counts.sum())
        self.component, self.count = _join(len(self.row), mine, theirs)

    def sizes(self) -> np.ndarray:
        """Pixels per component."""
        return np.bincount(self.component, weights=self.end - self.start, minlength=self.count)

    def touching_border(self) -> np.ndarray:
        """Whether each component touches the image border."""
        h, w = self.shape
        edge = (self.row == 0) | (self.row == h - 1) | (self.start == 0) | (self.end == w)
        return np.bincount(self.component, weights=edge.astype(np.float64), minlength=self.count) > 0

    def paint(self, keep: np.ndarray) -> np.ndarray:
        """The boolean image of the components where ``keep`` (per component) is True."""
        h, w = self.shape
        chosen = keep[self.component]
        steps = np.zeros((h, w + 1), np.int32)
        np.add.at(steps, (self.row[chosen], self.start[chosen]), 1)
        np.add.at(steps, (self.row[chosen], self.end[chosen]), -1)
        return np.cumsum(steps, axis=1)[:, :w] > 0


def _join(n: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of the graph of ``n`` nodes and edges (a, b): each node's component, 0..count-1."""
    parent = np.arange(n)  # parent[x] <= x throughout: hooking only lowers it
    while True:
        roots_a, roots_b = parent[a], parent[b]
        if np.array_equal(roots_a, roots_b):
            break
        low = np.minimum(roots_a, roots_b)  # hook both ends' roots onto the smaller one
        np.minimum.at(parent, roots_a, low)
        np.minimum.at(parent, roots_b, low)
        while not np.array_equal(jumped := parent[parent], parent):  # pointer jumping: each node to its root
            parent = jumped
    roots, component = np.unique(parent, return_inverse=True)
    return component.reshape(-1), len(roots)
