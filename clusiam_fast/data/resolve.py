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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("folder", "manifest", "coords", "shards")
_DESCRIPTION = {
    "folder": "a folder of image patches",
    "manifest": "a tiler manifest.csv",
    "coords": "CLAM/TRIDENT .h5 coordinate files",
    "shards": "webdataset .tar shards",
}


@dataclass(frozen=True)
class DataArg:
    """A resolved DATA argument. ``path``: the manifest file for ``manifest``, else what was given."""

    kind: str
    path: Path
    files: tuple[Path, ...] = ()

    def describe(self) -> str:
        return f"{_DESCRIPTION[self.kind]} ({self.path})"


def resolve_data(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None, *, accept: Sequence[str] = KINDS, what: str = "DATA"
) -> DataArg:
    """Turn the user's DATA into a :class:`DataArg` of a kind in ``accept``; errors name ``what``."""
    if data is None:
        raise ValueError(f"no {what} given: pass a folder of image patches or a tiler manifest.csv")
    if isinstance(data, (str, os.PathLike)):
        arg = _from_path(Path(data), what, accept)
    else:
        arg = _from_paths(data, what)
    if arg.kind not in accept:
        wanted = " or ".join(_DESCRIPTION[k] for k in accept)
        raise ValueError(f"{what} {arg.path} is {_DESCRIPTION[arg.kind]}; this command reads {wanted}")
    return arg


def data_kind(data: str | os.PathLike, what: str = "DATA") -> str:
    """The kind of the DATA path ``data``, found without listing a folder's images (and without torch)."""
    return _from_path(Path(data), what, KINDS, list_images=False).kind


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


_IN_FOLDER = {"manifest": "a manifest.csv", "coords": "any .h5 coordinate file", "shards": "any .tar shard"}


def _from_path(path: Path, what: str, accept: Sequence[str], list_images: bool = True) -> DataArg:
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
    if not list_images:
        return DataArg("folder", path)
    from .patch_folder import find_images  # torch: only when the images are listed

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
