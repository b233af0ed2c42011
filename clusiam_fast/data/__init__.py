"""Data: patch folders, the paper's augmentation, normalisation statistics and the demo patch set.

Slide patches (``slide_dataset``) and the DALI pipeline (``dali``) live in their
own modules and are imported where used, so this package stays light.
"""

from .augment import PAPER_RECIPE, GaussianBlur, Recipe, TwoViews, paper_augmentation
from .patch_folder import IMAGE_EXTENSIONS, PatchFolder, find_images, load_rgb
from .stats import dataset_mean_std

__all__ = [
    "IMAGE_EXTENSIONS",
    "PAPER_RECIPE",
    "GaussianBlur",
    "PatchFolder",
    "Recipe",
    "TwoViews",
    "dataset_mean_std",
    "find_images",
    "load_rgb",
    "paper_augmentation",
]
