"""The package's choices in one torch-free table: the CLIs' --help, the config and the registries read it.

``METHOD_TABLE`` holds one row of defaults per method, as published (each ``models/<method>.py`` cites its
source); the method's ``MethodSpec`` reads its row. tests/training/test_train_faults.py checks that every
registry holds exactly these keys; tests/test_method_switches.py that no module outside ``models/`` and
this file compares method names or copies a list of choices.
"""

# The model's head sizes: projection, projector hidden (None: the backbone's width), predictor hidden and
# first-layer bias, cluster head hidden (unused by the methods without clusters).
HEAD_KEYS = ("out_dim", "proj_hidden", "pred_hidden", "pred_first_bias", "cluster_hidden")

# One row per method, in --method's order. clusters: the model has the cluster head and adds the cluster
# loss; alpha: its weight in (1 - alpha) * L_inv + alpha * L_cluster (0 without clusters); fix_pred_lr: the
# predictor keeps the base lr; ema_momentum: the momentum target's EMA (None: no momentum target).
METHOD_TABLE: dict[str, dict] = {
    "clusiam": dict(
        clusters=True, alpha=0.5, fix_pred_lr=True, ema_momentum=None,
        out_dim=2048, proj_hidden=None, pred_hidden=512, pred_first_bias=False, cluster_hidden=512,
    ),
    "simsiam": dict(
        clusters=False, alpha=0.0, fix_pred_lr=True, ema_momentum=None,
        out_dim=2048, proj_hidden=None, pred_hidden=512, pred_first_bias=False, cluster_hidden=512,
    ),
    "clubyol": dict(
        clusters=True, alpha=0.9, fix_pred_lr=False, ema_momentum=0.99,
        out_dim=256, proj_hidden=None, pred_hidden=4096, pred_first_bias=True, cluster_hidden=256,
    ),
    "byol": dict(
        clusters=False, alpha=0.0, fix_pred_lr=False, ema_momentum=0.99,
        out_dim=256, proj_hidden=None, pred_hidden=4096, pred_first_bias=True, cluster_hidden=256,
    ),
}  # fmt: skip

METHOD_NAMES = tuple(METHOD_TABLE)
CLUSTER_METHOD_NAMES = tuple(name for name, row in METHOD_TABLE.items() if row["clusters"])
EMA_METHOD_NAMES = tuple(name for name, row in METHOD_TABLE.items() if row["ema_momentum"] is not None)
# A study's random_init baseline: this method's model at step 0 (the plain backbone, no cluster head).
RANDOM_INIT_METHOD = "simsiam"

ARCH_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CLUSTER_LOSS_IMPLS = ("auto", "fused", "reference")
MIL_MODEL_NAMES = ("maxpool", "dsmil", "abmil")


def method_defaults_text(key: str, methods: tuple[str, ...] = METHOD_NAMES) -> str:
    """A per-method default as --help quotes it: ``"2048 for clusiam/simsiam, 256 for clubyol/byol"``.

    Booleans read on / off; methods sharing a value are grouped in the table's order.
    """
    groups: dict[str, list[str]] = {}
    for name in methods:
        value = METHOD_TABLE[name][key]
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        groups.setdefault(text, []).append(name)
    return ", ".join(f"{value} for {'/'.join(names)}" for value, names in groups.items())
