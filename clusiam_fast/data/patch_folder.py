"""Folders of image patches: find them, open them as RGB, index them as a dataset."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_images(root: str | os.PathLike) -> list[Path]:
    """All images under ``root`` (recursive; png/jpg/jpeg/tif/tiff, any case), sorted.

    Hidden files and folders (names starting with ".") are skipped, so temporary
    files of atomic writes never count. Raises FileNotFoundError when ``root`` is
    missing, NotADirectoryError when it is a file, PermissionError when it cannot be
    listed and ValueError when it holds no image; each message names the folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data path {root} is not a folder (expected a folder of image patches)")
    denied: list[str] = []

    def on_error(error: OSError) -> None:
        denied.append(f"{error.filename}: {error.strerror}")

    found: list[Path] = []
    for folder, subdirs, files in os.walk(root, onerror=on_error, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(
            Path(folder, name) for name in files if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if denied and not found:
        raise PermissionError(f"data folder {root} could not be read ({'; '.join(denied[:3])}); check its permissions")
    if not found:
        raise ValueError(
            f"data folder {root} holds no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}, searched recursively); "
            "point DATA at a folder of patches or at a tiler manifest.csv"
        )
    return sorted(found)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as error:
        raise OSError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


class PatchFolder(Dataset):
    """Images of a folder (see :func:`find_images`) as PIL RGB images, passed through ``transform``.

    Example::

        ds = PatchFolder("patches/", transform=paper_augmentation(224, mean, std))
    """

    def __init__(self, root_or_paths: str | os.PathLike | list[Path], transform=None) -> None:
        if isinstance(root_or_paths, (str, os.PathLike)):
            self.root: Path | None = Path(root_or_paths)
            self.paths = find_images(root_or_paths)
        else:
            self.root, self.paths = None, [Path(p) for p in root_or_paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_rgb(self.paths[index])
        return img if self.transform is None else self.transform(img)

    def describe(self, index: int) -> str:
        """The file behind item ``index`` (for error reports)."""
        return str(self.paths[index])
