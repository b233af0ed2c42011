"""Small real cohorts for the cohort tests and benchmarks: copies of the CMU SVS under other names,
plus (optionally) a corrupt slide, a slide without mpp and a slide without tissue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"  # no mpp in its metadata
# level-0 tiles (240 px, 10 per row) inside the tissue of CMU, rows 5-7, columns 3-6
ZEROED = [r * 10 + c for r in (5, 6, 7) for c in (3, 4, 5, 6)]
BAD = {"corrupt": "zz_corrupt.svs", "no_mpp": "zz_no_mpp.svs", "no_tissue": "zz_no_tissue.tif"}


def make_cohort(wsi_dir: Path, folder: Path, good: int, bad: bool = False) -> list[Path]:
    """``good`` copies of CMU (slide_00.svs ...) and, with ``bad``, the three failing slides of BAD."""
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for k in range(good):
        dst = folder / f"slide_{k:02d}.svs"
        shutil.copy(wsi_dir / CMU, dst)
        dst.chmod(0o644)
        slides.append(dst)
    if bad:
        import tifffile

        slides.append(zeroed_copy(wsi_dir, folder / BAD["corrupt"]))
        shutil.copy(wsi_dir / TCGA, folder / BAD["no_mpp"])
        (folder / BAD["no_mpp"]).chmod(0o644)
        blank = folder / BAD["no_tissue"]
        pixels = np.full((1024, 1024, 3), 243, np.uint8)
        tifffile.imwrite(blank, pixels, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER")
        slides += [folder / BAD["no_mpp"], blank]
    return slides


def zeroed_copy(wsi_dir: Path, dst: Path, tiles=ZEROED, part: slice = slice(None)) -> Path:
    """A copy of CMU at ``dst`` with the bytes of level-0 JPEG ``tiles`` zeroed (``part`` of each)."""
    import tifffile

    shutil.copy(wsi_dir / CMU, dst)
    dst.chmod(0o644)
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages[0]
        spans = [(int(page.dataoffsets[i]), int(page.databytecounts[i])) for i in tiles]
    with open(dst, "r+b") as f:
        for offset, count in spans:
            start, stop, _ = part.indices(count)
            f.seek(offset + start)
            f.write(b"\0" * (stop - start))
    if tiles == ZEROED:
        assert sum(c for _, c in spans) > 150_000  # about 200 KB of tile data, as in the bug report
    return dst
