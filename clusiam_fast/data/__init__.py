"""Data: patch folders, the paper's augmentation, normalisation statistics and the demo patch set.

Slide patches (``slide_dataset``) and the DALI pipeline (``dali``) live in their
own modules and are imported where used, so this package stays light.

The names below are imported on first use, so that ``clusiam_fast.data.resolve`` (what DATA is) loads
without torch: the train CLI checks its arguments before importing it.
"""

from ..utils.lazy import lazy_attributes

_LAZY = {
    "IMAGE_EXTENSIONS": ".resolve",
    "PAPER_RECIPE": ".augment",
    "GaussianBlur": ".augment",
    "PatchFolder": ".patch_folder",
    "Recipe": ".augment",
    "TwoViews": ".augment",
    "dataset_mean_std": ".stats",
    "find_images": ".resolve",
    "load_rgb": ".patch_folder",
    "paper_augmentation": ".augment",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
