"""clusiam_fast: CluSiam for histopathology, fast.

The fused cluster loss (C++ / CUDA, with a pure-PyTorch reference), models and
trainer, slide tiling, a DALI data pipeline and MIL evaluation.

Layering (a module imports only from rooms to its left, or from its own room; a test
walks every import and fails on one that runs against it)::

    utils < ops < formats < slides < data < models < training, tiling, evaluation < CLI modules

- ``utils``: atomic writes, optional-dependency hints, thread scopes.
- ``ops``: the cluster loss (public function, module, reference, registration).
- ``formats``: the files other tools read: coordinate HDF5 (CLAM), the tiler manifest, feature bags.
- ``slides``: whole-slide readers (cuCIM, OpenSlide, tifffile) behind one interface.
- ``data``: what DATA is, patch datasets, augmentation, DALI pipeline, shards.
- ``models``: one file per method (CluSiam, CluBYOL, SimSiam, BYOL), backbones and heads.
- ``training``, ``tiling``, ``evaluation`` (with ``evaluation.mil``): the three jobs.
- CLI modules (``train``, ``tile``, ``extract``, ``evaluate``, ``shards``): argparse only.
"""

from . import reference
from .ops import ClusterLoss, cluster_loss, fused_available

__all__ = ["ClusterLoss", "cluster_loss", "fused_available", "reference"]
__version__ = "0.1.0"
