"""What is DATA? One answer for ``train``, the DALI loader, ``extract`` and ``shards``.

=============  =====================================================  ===================
kind           what the user passes                                   ``files``
=============  =====================================================  ===================
``manifest``   a tiler ``manifest.csv``, or a folder holding one       ()
``coords``     CLAM/TRIDENT ``.h5`` coordinate files, a folder of      the .h5 files
               them, or a CLAM/TRIDENT results folder (``patches/``)
``shards``     webdataset ``.tar`` shards, or a folder of them         the .tar files
``folder``     a folder of image patches (searched recursively)        the image files
=============  =====================================================  ===================

A folder is read in that order of precedence: ``manifest.csv`` first, then ``*.tar``,
then ``*.h5`` directly inside it, then ``patches/*.h5`` (a CLAM results folder, which
also holds ``masks/*.jpg`` and ``stitches/*.jpg`` that are not patches, or a TRIDENT
coordinates folder ``20x_256px_0px_overlap/``; a TRIDENT job folder holding exactly one
such folder is taken too), else the images below it. A list of paths (Python API) is
shards when all are ``.tar``, coordinate files when all are ``.h5``, else images.

Each command resolves its DATA once, at its entry (the CLI, or the public function given
a path), and hands the :class:`DataArg` on: the loaders and datasets take it as it is
(:func:`as_data_arg`) instead of looking at the path again. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

KINDS = ("folder", "manifest", "coords", "shards")
PATCH_KINDS = ("folder", "manifest", "coords")  # patches read one by one (train's torch loader, extract)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_DESCRIPTION = {
    "folder": "a folder of image patches",
    "manifest": "a tiler manifest.csv",
    "coords": "CLAM/TRIDENT .h5 coordinate files",
    "shards": "webdataset .tar shards",
}


@dataclass(frozen=True)
class DataArg:
    """A resolved DATA argument. ``path``: the manifest file for ``manifest``, else what was given.

    ``slide_dir``: where slides are looked for when they are not at the manifest's paths, or
    not beside the coordinate files (``--slide-dir``). Hashable (on all but ``files``)."""

    kind: str
    path: Path
    files: tuple[Path, ...] = field(default=(), hash=False)
    slide_dir: Path | None = None

    def describe(self) -> str:
        return f"{_DESCRIPTION[self.kind]} ({self.path})"


DataLike = DataArg | str | os.PathLike | Sequence[str | os.PathLike]


def resolve_data(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None,
    *,
    accept: Sequence[str] = KINDS,
    what: str = "DATA",
    slide_dir: str | os.PathLike | None = None,
) -> DataArg:
    """Turn the user's DATA into a :class:`DataArg` of a kind in ``accept``; errors name ``what``."""
    if data is None:
        raise ValueError(f"no {what} given: pass a folder of image patches or a tiler manifest.csv")
    if isinstance(data, (str, os.PathLike)):
        arg = _from_path(Path(data), what, accept)
    else:
        arg = _from_paths(data, what)
    _check_kind(arg, accept, what)
    return arg if slide_dir is None else replace(arg, slide_dir=Path(slide_dir))


def as_data_arg(
    data: DataLike | None,
    *,
    accept: Sequence[str] = KINDS,
    what: str = "DATA",
    slide_dir: str | os.PathLike | None = None,
) -> DataArg:
    """``data`` if it is resolved already (its kind checked against ``accept``; ``slide_dir``, when
    given, set), else :func:`resolve_data` of it: how loaders take DATA without resolving it again."""
    if not isinstance(data, DataArg):
        return resolve_data(data, accept=accept, what=what, slide_dir=slide_dir)
    _check_kind(data, accept, what)
    return data if slide_dir is None else replace(data, slide_dir=Path(slide_dir))


def _check_kind(arg: DataArg, accept: Sequence[str], what: str) -> None:
    if arg.kind not in accept:
        wanted = " or ".join(_DESCRIPTION[k] for k in accept)
        raise ValueError(f"{what} {arg.path} is {_DESCRIPTION[arg.kind]}; this command reads {wanted}")


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


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


_IN_FOLDER = {"manifest": "a manifest.csv", "coords": "any .h5 coordinate file", "shards": "any .tar shard"}


def _from_path(path: Path, what: str, accept: Sequence[str]) -> DataArg:
    if not path.exists():
        hint = "; make a tiler manifest with `python -m clusiam_fast.tile`" if path.suffix.lower() == ".csv" else ""
        raise FileNotFoundError(f"{what} {path} does not exist{hint}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return DataArg("manifest", path)
        if suffix in (".h5", ".hdf5"):
            return DataArg("coords", path, (path,))
        if suffix == ".tar":
            return DataArg("shards", path, (path,))
        raise ValueError(
            f"{what} {path} is a file but not a tiler manifest (.csv), a coordinate file (.h5) or a shard (.tar); "
            "pass a folder of image patches or one of those"
        )
    if (path / "manifest.csv").is_file():
        return DataArg("manifest", path / "manifest.csv")
    tars = sorted(p for p in path.glob("*.tar") if not _hidden(p))
    if tars:
        return DataArg("shards", path, tuple(tars))
    h5 = sorted(p for p in path.glob("*.h5") if not _hidden(p))
    if h5:
        return DataArg("coords", path, tuple(h5))
    results = _results_patches(path)
    if results is not None:
        return DataArg("coords", results, tuple(sorted(p for p in results.glob("*.h5") if not _hidden(p))))
    if "folder" not in accept:
        looked_for = " nor ".join(_IN_FOLDER[k] for k in accept if k in _IN_FOLDER)
        raise FileNotFoundError(f"{what} {path}: neither {looked_for} in this folder")
    return DataArg("folder", path, tuple(find_images(path)))


def _results_patches(path: Path) -> Path | None:
    """``path/patches`` of a CLAM or TRIDENT results folder (or of the one coordinates folder of a TRIDENT job)."""
    if any((path / "patches").glob("*.h5")):
        return path / "patches"
    found = [p.parent for p in sorted(path.glob("*/patches")) if any(p.glob("*.h5"))]
    if len(found) > 1:
        raise ValueError(
            f"{path} holds several coordinate folders ({', '.join(str(p.relative_to(path)) for p in found)}); "
            "pass one of them"
        )
    return found[0] / "patches" if found else None


def _from_paths(items: Sequence[str | os.PathLike], what: str) -> DataArg:
    paths = [Path(p) for p in items]
    if not paths:
        raise ValueError(f"{what}: the list of files is empty")
    suffixes = {p.suffix.lower() for p in paths}
    kind = "shards" if suffixes == {".tar"} else "coords" if suffixes <= {".h5", ".hdf5"} else "folder"
    return DataArg(kind, Path(os.path.commonpath([str(p.parent) for p in paths]) or "."), tuple(paths))
