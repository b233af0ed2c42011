"""Pack the PCam subset that the GPU check's science step trains and evaluates on (< 40 MiB).

The GPU machine is offline and ``../shared`` does not travel to it, so the subset goes along
in the run's ``carry`` as two plain tar files, unpacked there by ``benchmarks/gpu_check.sh``:

- ``train.tar``: ``train/<i>.jpg``, a seeded sample of PCam train patches of both classes
  (the labels are not used for training);
- ``valid.tar``: ``valid/<class>/<name>.jpg``, a seeded sample of PCam valid patches per class,
  from which the study draws its KNN, clustering and MIL sets.

    python benchmarks/pack_science_data.py                      # ../shared/data/pcam -> benchmarks/carry/pcam
    python benchmarks/pack_science_data.py PCAM_DIR --out DIR --train 6000 --valid-per-class 600
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 40 * 2**20  # the cap for what travels with a device run


def _sample(files: list[Path], n: int, rng: random.Random, where: Path) -> list[Path]:
    if len(files) < n:
        raise SystemExit(f"pack_science_data: {where} holds {len(files)} patches, fewer than the {n} asked for")
    return sorted(rng.sample(files, n))


def _write_tar(path: Path, members: list[tuple[str, Path]]) -> int:
    """Write ``members`` (name in the tar, file) to ``path`` atomically; return its size."""
    tmp = path.with_suffix(".tar.part")
    with tarfile.open(tmp, "w") as tar:
        for name, file in members:
            data = file.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0  # fixed mtime: the same subset gives the same bytes
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path.stat().st_size


def pack(pcam: Path, out: Path, n_train: int, per_class: int, seed: int = 0) -> dict[str, int]:
    """Write ``out/train.tar`` and ``out/valid.tar``; return their sizes in bytes."""
    if not (pcam / "train").is_dir() or not (pcam / "valid").is_dir():
        raise SystemExit(f"pack_science_data: {pcam} has no train/ and valid/ folders; pass the PCam folder")
    rng = random.Random(seed)
    train = _sample(sorted((pcam / "train").glob("*/*.jpg")), n_train, rng, pcam / "train")
    valid = []
    for folder in sorted(p for p in (pcam / "valid").iterdir() if p.is_dir()):
        valid += [
            (f"valid/{folder.name}/{f.name}", f) for f in _sample(sorted(folder.glob("*.jpg")), per_class, rng, folder)
        ]
    out.mkdir(parents=True, exist_ok=True)
    sizes = {
        "train.tar": _write_tar(out / "train.tar", [(f"train/{i:06d}.jpg", f) for i, f in enumerate(train)]),
        "valid.tar": _write_tar(out / "valid.tar", valid),
    }
    if sum(sizes.values()) > LIMIT:
        raise SystemExit(
            f"pack_science_data: {sum(sizes.values()) / 2**20:.1f} MiB is over the 40 MiB a device run carries; "
            "lower --train or --valid-per-class"
        )
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pcam", nargs="?", type=Path, default=REPO.parent / "shared/data/pcam", help="PCam folder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/carry/pcam", help="where the tars go")
    parser.add_argument("--train", type=int, default=6000, help="training patches (default 6000)")
    parser.add_argument("--valid-per-class", type=int, default=600, help="evaluation patches per class (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = pack(args.pcam, args.out, args.train, args.valid_per_class, args.seed)
    total = sum(sizes.values())
    print(
        f"{args.out}: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
        + f" ({total / 2**20:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
