"""Models: SimSiam, CluSiam, BYOL and CluBYOL over torchvision ResNet backbones.

``build_model(method, arch, num_clusters, **options)`` builds one; every model has
``model.backbone`` (a torchvision ResNet with ``fc = nn.Identity()``),
``model.features(x) -> (N, F)``, ``model.cluster_logits(x) -> (N, K)`` (cluster
methods) and ``model(x1, x2) -> PairOutput``. ``load_checkpoint(path)`` rebuilds a
trained model; ``export_backbone`` writes a plain torchvision state_dict.
"""

from .backbone import ARCHS, build_backbone
from .base import SelfSupervisedModel
from .byol import BYOL
from .checkpoint import backbone_state_dict, export_backbone, load_checkpoint, read_checkpoint
from .factory import CLUSTER_METHODS, METHOD_DEFAULTS, METHODS, MOMENTUM_METHODS, build_model, model_config, unwrap
from .heads import Block, mlp
from .outputs import PairOutput
from .siamese import SimSiam

__all__ = [
    "ARCHS", "BYOL", "Block", "CLUSTER_METHODS", "METHODS", "METHOD_DEFAULTS", "MOMENTUM_METHODS",
    "PairOutput", "SelfSupervisedModel", "SimSiam", "backbone_state_dict", "build_backbone",
    "build_model", "export_backbone", "load_checkpoint", "mlp", "model_config", "read_checkpoint", "unwrap",
]
