"""The tissue of a slide as files other tools open: GeoJSON contours (QuPath) and the mask PNG.

``OUT/contours/<slide_id>.geojson``: a FeatureCollection with one ``Polygon`` feature per
tissue piece (its holes as inner rings), in level-0 pixel coordinates, with QuPath's
properties (``objectType: annotation``, classification ``Tissue``), as TRIDENT writes them:
QuPath's *File > Import objects* and shapely's ``shape()`` read it. The outlines are the
mask's marching-squares isolines (scikit-image), simplified by half a mask pixel; each hole goes
to the smallest outline around it.

``OUT/masks/<slide_id>.png``: the tissue mask itself, 255 tissue / 0 glass, one pixel per
``mask_downsample`` level-0 pixels (the downsample is in the PNG's ``downsample`` text field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path, atomic_write_text
from ..utils.deps import require


def tissue_polygons(mask: np.ndarray, downsample: tuple[float, float]):
    """The tissue of ``mask`` as a shapely (Multi)Polygon in level-0 pixels (mask pixel i spans [i, i+1) x ds)."""
    shapely = require("shapely", "shapely", "writing tissue contours")
    from shapely import LinearRing, MultiPolygon, Point, Polygon, STRtree
    from shapely.affinity import affine_transform
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)  # closes the outlines that touch the border
    shells, holes = [], []
    for ring in find_contours(padded, 0.5, positive_orientation="high"):
        if len(ring) < 4:
            continue
        outline = shapely.simplify(LinearRing(ring[:, ::-1] - 1), 0.5, preserve_topology=False)  # (row, col) -> (x, y)
        if outline.is_empty or len(outline.coords) < 4:
            continue
        # tissue on the left of its outline: shells run clockwise on screen (y down), holes counter-clockwise
        (holes if outline.is_ccw else shells).append(outline)
    if not shells:
        return MultiPolygon()
    areas = [Polygon(shell).area for shell in shells]
    inner: list[list] = [[] for _ in shells]
    tree = STRtree([Polygon(shell) for shell in shells])
    for hole in holes:  # each hole belongs to the smallest shell around it (a point of its outline lies inside)
        around = tree.query(Point(hole.coords[0]), predicate="within")
        if len(around):
            inner[min(around, key=areas.__getitem__)].append(hole)
    pieces = [Polygon(shell, rings) for shell, rings in zip(shells, inner)]
    pieces = [p if p.is_valid else shapely.make_valid(p) for p in pieces]
    polygons = [g for p in pieces for g in getattr(p, "geoms", [p]) if isinstance(g, Polygon) and not g.is_empty]
    dsx, dsy = downsample
    # mask pixel centres (i + 0.5) x ds in level-0 px
    return affine_transform(MultiPolygon(polygons), [dsx, 0, 0, dsy, 0.5 * dsx, 0.5 * dsy])


def contours_geojson(mask: np.ndarray, downsample: tuple[float, float], slide_id: str) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (dict) of the tissue pieces of ``mask``, one Polygon feature each."""
    from shapely.geometry import mapping

    tissue = tissue_polygons(mask, downsample)
    pieces = sorted(getattr(tissue, "geoms", [tissue]), key=lambda p: -p.area)
    features = [
        {
            "type": "Feature",
            "geometry": mapping(piece),
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tissue", "color": [0, 200, 0]},
                "name": f"{slide_id} tissue {i}",
                "tissue_id": i,
            },
        }
        for i, piece in enumerate(p for p in pieces if not p.is_empty)
    ]
    return {"type": "FeatureCollection", "features": features}


def save_contours(path: str | Path, mask: np.ndarray, downsample: tuple[float, float], slide_id: str) -> Path:
    """Write the GeoJSON of :func:`contours_geojson`, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(contours_geojson(mask, downsample, slide_id)), durable=False)
    return path


def save_mask(path: str | Path, mask: np.ndarray, downsample: tuple[float, float]) -> Path:
    """Write the mask as an 8-bit PNG (255 tissue), its downsample in a text chunk, atomically."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("downsample", f"{downsample[0]:.6f} {downsample[1]:.6f}")
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG", pnginfo=info, compress_level=1)
    return path
