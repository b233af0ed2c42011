"""Bags that cannot be evaluated, found when they are loaded and left out by name.

A bag with no patches (a slide whose patches were all filtered out, or an empty CLAM
file) or with NaN/Inf features (an encoder that diverged on that slide) would stop the
whole evaluation deep inside scikit-learn or the MIL heads without naming the file.
:func:`screen_bags` leaves such a bag out -- the whole bag, since a slide's other
patches came from the same broken run -- and says which and why; the evaluation runs on
the rest and fails, naming the left-out bags, only when none remains.
"""

from __future__ import annotations

import numpy as np

from ..formats.feature_bags import FeatureBag


def bag_problem(bag: FeatureBag) -> str | None:
    """Why ``bag`` cannot be evaluated (None: it can)."""
    features = np.asarray(bag.features)
    if features.ndim != 2:
        return f"features have shape {features.shape}, not (patches, features)"
    if len(features) == 0:
        return "no patches"
    bad = int((~np.isfinite(features)).any(axis=1).sum())
    if bad:
        return f"{bad} of {len(features)} patches have NaN or Inf features"
    return None


def screen_bags(bags: list[FeatureBag]) -> tuple[list[FeatureBag], list[dict]]:
    """(usable bags, left-out bags as {slide_id, path, reason}); a ValueError when none is usable."""
    kept, left_out = [], []
    for bag in bags:
        problem = bag_problem(bag)
        if problem is None:
            kept.append(bag)
        else:
            left_out.append({"slide_id": bag.slide_id, "path": str(bag.path), "reason": problem})
    if not kept:
        shown = "; ".join(f"{b['path']}: {b['reason']}" for b in left_out[:5])
        more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        raise ValueError(f"no feature bag can be evaluated: all {len(left_out)} are left out ({shown}{more})")
    return kept, left_out


def left_out_lines(left_out: list[dict], limit: int = 20) -> list[str]:
    """One console/report line per left-out bag (at most ``limit``, then a count)."""
    lines = [f"left out bag {b['slide_id']} ({b['path']}): {b['reason']}" for b in left_out[:limit]]
    if len(left_out) > limit:
        lines.append(f"... and {len(left_out) - limit} more left-out bags (all in report.json)")
    return lines
