"""Multiple-instance learning on feature bags: Max-pooling MIL, DSMIL and the paper's protocol.

- :mod:`.base`: padded-bag batching with masks, masked max/softmax, :class:`MILOutput`.
- :mod:`.maxpool`, :mod:`.dsmil`: the two heads; :func:`build_mil` by name.
- :mod:`.data`: :class:`BagDataset` and the stratified seeded split.
- :mod:`.trainer`: grid search, best-validation selection, one test evaluation per
  selection through a sealed :class:`HeldOutTestSet`, mean/std over seeds.
"""

from .bags import MILOutput, masked_max, masked_softmax, pad_bags
from .data import BagDataset, key_instance_bags, stratified_split
from .dsmil import DSMIL
from .maxpool import MaxPoolMIL
from .protocol import HeldOutTestSet, MILConfig, Selection, predict, run_protocol, select_model, warmup_cosine
from .registry import MIL_MODELS, build_mil

__all__ = [
    "BagDataset",
    "DSMIL",
    "key_instance_bags",
    "HeldOutTestSet",
    "MILConfig",
    "MILOutput",
    "MIL_MODELS",
    "MaxPoolMIL",
    "Selection",
    "build_mil",
    "masked_max",
    "masked_softmax",
    "pad_bags",
    "predict",
    "run_protocol",
    "select_model",
    "stratified_split",
    "warmup_cosine",
]
