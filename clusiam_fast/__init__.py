"""clusiam_fast: CluSiam for histopathology, fast.

The fused cluster loss (C++ / CUDA, with a pure-PyTorch reference), models and
trainer, slide tiling, a DALI data pipeline and MIL evaluation.

Layering (a module imports only from rooms to its left, or from its own room; a test
walks every import and fails on one that runs against it)::

    utils < cli, ops < formats < slides, cohort < data < models < training, tiling, extraction, evaluation < CLI modules
    < study < __main__

- ``utils``: atomic writes, optional-dependency hints, thread scopes.
- ``cli``: what every verb shares, torch-free: one-line errors and exit statuses, ``--config`` files, argparse types.
- ``ops``: the cluster loss (public function, module, reference, registration).
- ``formats``: the files other tools read: coordinate HDF5 (CLAM, TRIDENT), the tiler manifest, feature bags.
- ``slides``: whole-slide readers (cuCIM, OpenSlide, tifffile) behind one interface.
- ``cohort``: resumable cohorts: done records, per-slide locks, shards, cohort.json, local / Ray engines.
- ``data``: what DATA is, patch datasets, augmentation, DALI pipeline, shards.
- ``models``: one file per method (CluSiam, CluBYOL, SimSiam, BYOL), backbones and heads.
- ``training``, ``tiling``, ``extraction``, ``evaluation`` (with ``evaluation.mil``): the four jobs,
  one room per verb (train, tile, extract, evaluate).
- CLI modules (``train``, ``tile``, ``extract``, ``evaluate``, ``shards``, ``info``): argparse only.
- ``study``: compares methods end to end by running the train / extract / evaluate CLIs.
- ``__main__``: ``clusiam-fast VERB`` (``python -m clusiam_fast VERB``) runs the verb's module.
"""

from importlib import import_module

__all__ = ["ClusterLoss", "cluster_loss", "fused_available", "reference"]
__version__ = "0.1.0"

# Loaded on first use, so that torch-free paths (``--help``, the tiler) do not import torch.
_LAZY = {"ClusterLoss": ".ops", "cluster_loss": ".ops", "fused_available": ".ops", "reference": ".reference"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'clusiam_fast' has no attribute {name!r}")
    module = import_module(_LAZY[name], __name__)
    value = module if name == "reference" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
