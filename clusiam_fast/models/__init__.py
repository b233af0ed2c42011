"""Models: SimSiam, CluSiam, BYOL and CluBYOL over torchvision ResNet backbones, one file per method.

Each method file (``simsiam.py``, ``clusiam.py``, ``byol.py``, ``clubyol.py``) holds the model class, with
the method interface the trainer calls (``invariance_loss(out, reduction)``, ``after_optimizer_step()`` for
the EMA target, ``optimizer_groups(fix_pred_lr)`` for the lr policy), and its ``METHOD`` :class:`MethodSpec`,
whose defaults (head sizes, alpha, fix_pred_lr, EMA momentum) are its row of ``clusiam_fast/choices.py``;
``method_spec(name)`` looks one up.

``build_model(method, arch, num_clusters, **options)`` builds one; every model has
``model.backbone`` (a torchvision ResNet with ``fc = nn.Identity()``),
``model.features(x) -> (N, F)``, ``model.cluster_logits(x) -> (N, K)`` (cluster
methods) and ``model(x1, x2) -> PairOutput``. ``load_checkpoint(path)`` rebuilds a
trained model; ``export_backbone`` writes a plain torchvision state_dict.
"""

from .backbone import ARCHS, build_backbone
from .base import MethodSpec, SelfSupervisedModel
from .byol import BYOL
from .clubyol import CluBYOL
from .clusiam import CluSiam
from .factory import (
    CLUSTER_METHODS,
    METHOD_DEFAULTS,
    METHOD_SPECS,
    METHODS,
    MOMENTUM_METHODS,
    build_model,
    method_spec,
    model_config,
    unwrap,
)
from .heads import Block, mlp
from .outputs import PairOutput
from .simsiam import SimSiam
from .weights import backbone_state_dict, export_backbone, load_checkpoint, read_checkpoint

__all__ = [
    "ARCHS",
    "BYOL",
    "Block",
    "CLUSTER_METHODS",
    "CluBYOL",
    "CluSiam",
    "METHODS",
    "METHOD_DEFAULTS",
    "METHOD_SPECS",
    "MOMENTUM_METHODS",
    "MethodSpec",
    "PairOutput",
    "SelfSupervisedModel",
    "SimSiam",
    "backbone_state_dict",
    "build_backbone",
    "build_model",
    "export_backbone",
    "load_checkpoint",
    "method_spec",
    "mlp",
    "model_config",
    "read_checkpoint",
    "unwrap",
]
