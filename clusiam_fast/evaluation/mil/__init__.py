"""Multiple-instance learning on feature bags: Max-pooling MIL, DSMIL, ABMIL and the paper's protocol.

- :mod:`.bags`: padded-bag batching with masks, masked max/softmax, :class:`MILOutput`.
- :mod:`.maxpool`, :mod:`.dsmil`, :mod:`.abmil`: the three heads; :func:`build_mil` by name.
- :mod:`.data`: :class:`BagDataset` (optionally with a patient id per slide) and the
  stratified seeded split.
- :mod:`.splits`: held-out and k-fold splits, stratified, by patient when patient ids are given.
- :mod:`.protocol`: grid search, best-validation selection, one test evaluation per
  selection through a sealed :class:`HeldOutTestSet`, mean/std over seeds, bootstrap CI.
- :mod:`.crossval`: the protocol on every fold of a k-fold split, pooled out-of-fold.
- :mod:`.plan`: every split of the protocol made before any training; what the labels allow.
"""

from .abmil import ABMIL
from .bags import MILOutput, masked_max, masked_softmax, pad_bags
from .crossval import run_cross_validation
from .data import BagDataset, key_instance_bags, stratified_split
from .dsmil import DSMIL
from .maxpool import MaxPoolMIL
from .protocol import (
    HeldOutTestSet,
    MILConfig,
    Selection,
    predict,
    predict_with_attention,
    run_protocol,
    select_model,
    warmup_cosine,
)
from .registry import DEFAULT_MODELS, MIL_MODELS, build_mil
from .splits import check_patients, holdout_split, kfold_splits

__all__ = [
    "ABMIL",
    "BagDataset",
    "DEFAULT_MODELS",
    "DSMIL",
    "key_instance_bags",
    "HeldOutTestSet",
    "MILConfig",
    "MILOutput",
    "MIL_MODELS",
    "MaxPoolMIL",
    "Selection",
    "build_mil",
    "check_patients",
    "holdout_split",
    "kfold_splits",
    "masked_max",
    "masked_softmax",
    "pad_bags",
    "predict",
    "predict_with_attention",
    "run_cross_validation",
    "run_protocol",
    "select_model",
    "stratified_split",
    "warmup_cosine",
]
