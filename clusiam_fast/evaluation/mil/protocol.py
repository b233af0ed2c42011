"""The MIL evaluation protocol, honest by construction.

Per model and seed:
1. :func:`select_model` receives ONLY the training slides. It makes a stratified,
   seeded 75/25 train/validation split of them (by patient when the slides carry
   patient ids, :func:`~.splits.holdout_split`), trains one head per grid point
   (learning rate x weight decay; 50 epochs, 5 linear warm-up epochs then cosine
   decay, per step), keeps each run's best-validation epoch, and returns the best of
   these checkpoints (by default the mean of validation macro AUC and accuracy, DSMIL's
   criterion; ties broken by lower validation loss).
2. :meth:`HeldOutTestSet.evaluate` scores that single checkpoint on the test slides,
   once. The test slides live only inside the :class:`HeldOutTestSet`, which
   :func:`select_model` never receives, and which refuses a second evaluation of the
   same selection.
3. :func:`run_protocol` repeats this over seeds (each seed changes the validation split,
   the initialisation and the batch order) and reports the mean and standard deviation
   of accuracy and per-class one-vs-rest AUC, and a bootstrap 95% CI of the test macro
   AUC of each run and of the seeds' mean (:mod:`clusiam_fast.evaluation.bootstrap`;
   resampling patients when the test slides carry patient ids). Heads with attention
   (ABMIL, DSMIL) hand each test slide's attention to an optional ``attention_sink``.
   :mod:`.crossval` runs the same protocol on every fold of a k-fold split.

Optimiser: Adam with L2 weight decay, as in DSMIL's reference code (the CluSiam paper
names the grid, not the optimiser); ``MILConfig.optimizer`` switches to AdamW or SGD.

CPU threads: the heads are tiny, so on the CPU small bags train fastest on one thread
(3x faster than two on a busy 2-core machine). ``MILConfig.cpu_threads`` sets the
count during selection; None (default) picks 1 when a typical bag holds fewer than
2**20 feature values and leaves torch's setting alone otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...utils.threads import torch_threads
from ..bootstrap import bootstrap_auc
from ..metrics import classification_metrics, mean_std
from .data import BagDataset
from .registry import DEFAULT_MODELS, build_mil
from .splits import holdout_split


@dataclass
class MILConfig:
    """Protocol settings; the defaults are the paper's (configure down for tests)."""

    lrs: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    weight_decays: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    epochs: int = 50
    warmup_epochs: int = 5
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # eva: 5 runs of each patch task
    val_fraction: float = 0.25
    batch_size: int = 1
    optimizer: str = "adam"
    select_metric: str = "auc_acc"
    device: str = "cpu"
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_threads: int | None = None
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.select_metric not in ("auc_acc", "auc_macro", "accuracy", "loss"):
            raise ValueError(f"select_metric must be auc_acc, auc_macro, accuracy or loss, got {self.select_metric!r}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap (replicates of the test AUC CI, 0 = none) must be >= 0, got {self.bootstrap}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {self.epochs}, {self.warmup_epochs}"
            )


@dataclass
class Selection:
    """The checkpoint chosen on validation data, and how it was chosen."""

    model_name: str
    seed: int
    lr: float
    weight_decay: float
    epoch: int
    val_metrics: dict
    val_loss: float
    state_dict: dict
    in_dim: int
    classes: list[str]
    model_options: dict
    grid: list[dict]
    train_slides: list[str]
    val_slides: list[str]

    def build(self) -> nn.Module:
        """A fresh head in eval mode holding the selected weights."""
        model = build_mil(self.model_name, self.in_dim, len(self.classes), **self.model_options)
        model.load_state_dict(self.state_dict)
        return model.eval()


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / remaining)))


@torch.no_grad()
def predict_with_attention(
    model: nn.Module, bags: BagDataset, batch_size: int = 8, device: str = "cpu"
) -> tuple[np.ndarray, float, list[np.ndarray] | None]:
    """Class probabilities (n, C), the mean loss, and each bag's attention (None without).

    A bag's attention is (N_i,) for a single-branch head (ABMIL), (N_i, C) per class (DSMIL).
    """
    model.eval()
    probs, total, attention = [], 0.0, []
    for x, mask, y in bags.batches(batch_size, device=device):
        out = model(x, mask)
        total += float(model.loss(out, y)) * len(y)
        probs.append(torch.softmax(out.logits.float(), dim=1).cpu())
        if out.attention is not None:
            a = out.attention.float().cpu()
            a = a.squeeze(-1) if a.shape[-1] == 1 else a
            attention += [a[i, : int(n)].numpy() for i, n in enumerate(mask.sum(1).tolist())]
    return torch.cat(probs).numpy(), total / max(1, len(bags)), attention or None


def predict(model: nn.Module, bags: BagDataset, batch_size: int = 8, device: str = "cpu") -> tuple[np.ndarray, float]:
    """Class probabilities (n, C) of every bag, in order, and the mean loss."""
    probs, loss, _ = predict_with_attention(model, bags, batch_size, device)
    return probs, loss


@contextlib.contextmanager
def _cpu_threads(cfg: MILConfig, bags: BagDataset):
    """Run with ``cfg.cpu_threads`` torch threads (see the module docstring), then restore."""
    threads = cfg.cpu_threads
    if threads is None and len(bags):
        typical = float(np.median([b.shape[0] for b in bags.features])) * bags.feature_dim
        threads = 1 if typical < 2**20 else None
    with torch_threads(threads if str(cfg.device).startswith("cpu") else None):
        yield


def _optimizer(name: str, params, lr: float, wd: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9)


def _score(metrics: dict, loss: float, select_metric: str) -> tuple[float, float]:
    """Bigger is better; a NaN AUC (a class missing from validation) counts as the accuracy."""
    if select_metric == "loss":
        return (-loss, 0.0)
    auc = metrics["auc_macro"] if not math.isnan(metrics["auc_macro"]) else metrics["accuracy"]
    value = {"auc_acc": 0.5 * (auc + metrics["accuracy"]), "auc_macro": auc, "accuracy": metrics["accuracy"]}[
        select_metric
    ]
    return (value, -loss)


def train_candidate(
    model_name: str, train: BagDataset, val: BagDataset, lr: float, wd: float, cfg: MILConfig, seed: int, bar=None
) -> dict:
    """Train one grid point; return its best-validation epoch, metrics and weights.

    The torch RNG is seeded with ``seed`` for the whole run (initialisation and dropout)
    and restored afterwards, so a run depends on its seed and data only.
    """
    cuda = str(cfg.device).startswith("cuda")
    with torch.random.fork_rng(devices=[torch.device(cfg.device).index or 0] if cuda else []):
        torch.manual_seed(seed)
        return _train_candidate(model_name, train, val, lr, wd, cfg, seed, bar)


def _train_candidate(
    model_name: str, train: BagDataset, val: BagDataset, lr: float, wd: float, cfg: MILConfig, seed: int, bar
) -> dict:
    model = build_mil(model_name, train.feature_dim, train.num_classes, **cfg.model_options.get(model_name, {})).to(
        cfg.device
    )
    optimizer = _optimizer(cfg.optimizer, model.parameters(), lr, wd)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warm))
    generator = torch.Generator().manual_seed(seed)
    best: dict | None = None
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        train_loss = 0.0
        for x, mask, y in train.batches(cfg.batch_size, shuffle=True, generator=generator, device=cfg.device):
            loss = model.loss(model(x, mask), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_loss += float(loss.detach()) * len(y)
        probs, val_loss = predict(model, val, max(cfg.batch_size, 8), cfg.device)
        metrics = classification_metrics(val.labels.numpy(), probs, val.classes)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss / len(train),
                "val_loss": val_loss,
                "val_accuracy": metrics["accuracy"],
                "val_auc_macro": metrics["auc_macro"],
            }
        )
        score = _score(metrics, val_loss, cfg.select_metric)
        if best is None or score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch,
                "val_metrics": metrics,
                "val_loss": val_loss,
                "state_dict": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
            }
        if bar is not None:
            bar.update(1)
    assert best is not None
    best["history"] = history
    return best


def select_model(model_name: str, train_slides: BagDataset, cfg: MILConfig, seed: int) -> Selection:
    """Model selection on the training slides alone (this function never sees test data)."""
    from tqdm.auto import tqdm

    keep, held = holdout_split(train_slides.labels.numpy(), cfg.val_fraction, seed, train_slides.groups)
    train, val = train_slides.subset(keep), train_slides.subset(held)
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    best, summary = None, []
    with (
        _cpu_threads(cfg, train_slides),
        tqdm(
            total=len(grid) * cfg.epochs, desc=f"{model_name} seed {seed}", disable=not cfg.progress, leave=False
        ) as bar,
    ):
        for lr, wd in grid:
            cand = train_candidate(model_name, train, val, lr, wd, cfg, seed, bar)
            summary.append(
                {
                    "lr": lr,
                    "weight_decay": wd,
                    "best_epoch": cand["epoch"],
                    "val_loss": cand["val_loss"],
                    "val_accuracy": cand["val_metrics"]["accuracy"],
                    "val_auc_macro": cand["val_metrics"]["auc_macro"],
                    "history": cand["history"],
                }
            )
            if best is None or cand["score"] > best[2]["score"]:
                best = (lr, wd, cand)
            bar.set_postfix(best_lr=best[0], best_wd=best[1], val=f"{best[2]['score'][0]:.3f}")
    assert best is not None
    lr, wd, cand = best
    return Selection(
        model_name=model_name,
        seed=seed,
        lr=lr,
        weight_decay=wd,
        epoch=cand["epoch"],
        val_metrics=cand["val_metrics"],
        val_loss=cand["val_loss"],
        state_dict=cand["state_dict"],
        in_dim=train_slides.feature_dim,
        classes=list(train_slides.classes),
        model_options=dict(cfg.model_options.get(model_name, {})),
        grid=summary,
        train_slides=list(train.slide_ids),
        val_slides=list(val.slide_ids),
    )


class HeldOutTestSet:
    """The test slides, sealed: usable only through :meth:`evaluate`, once per selection."""

    def __init__(self, bags: BagDataset) -> None:
        if len(bags) == 0:
            raise ValueError("the test set has no slides")
        self.__bags = bags
        self._evaluated: set[tuple[str, int]] = set()
        self.evaluations = 0

    def __len__(self) -> int:
        return len(self.__bags)

    @property
    def classes(self) -> list[str]:
        return list(self.__bags.classes)

    def evaluate(self, selection: Selection, device: str = "cpu", batch_size: int = 8) -> dict:
        """Score ``selection`` on the test slides; each (model, seed) selection only once."""
        key = (selection.model_name, selection.seed)
        if key in self._evaluated:
            raise RuntimeError(f"the test set was already used for {key}; it is evaluated once per selection")
        if list(selection.classes) != list(self.__bags.classes):
            raise ValueError(
                f"selection classes {selection.classes} differ from the test classes {self.__bags.classes}"
            )
        self._evaluated.add(key)
        self.evaluations += 1
        model = selection.build().to(device)
        probs, loss, attention = predict_with_attention(model, self.__bags, batch_size, device)
        metrics = classification_metrics(self.__bags.labels.numpy(), probs, self.__bags.classes)
        metrics["loss"] = loss
        return {
            "metrics": metrics,
            "slide_ids": list(self.__bags.slide_ids),
            "patient_ids": None if self.__bags.groups is None else list(self.__bags.groups),
            "labels": self.__bags.labels.tolist(),
            "probs": probs.tolist(),
            "attention": attention,
        }


AttentionSink = Callable[[str, int, list[str], list[np.ndarray]], None]


def auc_ci(tested: Sequence[dict], cfg: MILConfig) -> dict | None:
    """Bootstrap CI of the mean test macro AUC of runs scored on the same slides (None if disabled)."""
    if not cfg.bootstrap:
        return None
    first = tested[0]
    return bootstrap_auc(
        first["labels"],
        [np.asarray(t["probs"]) for t in tested],
        groups=first.get("patient_ids"),
        n_boot=cfg.bootstrap,
        seed=cfg.bootstrap_seed,
    )


def summarise(tests: Sequence[dict], classes: Sequence[str], cfg: MILConfig) -> dict:
    """Mean/std over runs of accuracy and AUCs, and the CI of the mean macro AUC."""
    metrics = [t["metrics"] for t in tests]
    return {
        "accuracy": mean_std([m["accuracy"] for m in metrics]),
        "auc_macro": mean_std([m["auc_macro"] for m in metrics]),
        "auc": {c: mean_std([m["auc"][c] for m in metrics]) for c in classes},
        "auc_ci": auc_ci(tests, cfg),
    }


def run_protocol(
    train_slides: BagDataset,
    test: HeldOutTestSet,
    cfg: MILConfig,
    models: Sequence[str] = DEFAULT_MODELS,
    attention_sink: AttentionSink | None = None,
) -> dict:
    """Select on training slides, test once, for every model and seed; summarise over seeds.

    ``attention_sink(model, seed, slide_ids, attentions)`` receives the test slides'
    attention of heads that have one; the returned dict holds only JSON-able values.
    """
    if not isinstance(test, HeldOutTestSet):
        raise TypeError("pass the test slides wrapped in HeldOutTestSet so they stay sealed during selection")
    if list(train_slides.classes) != test.classes:
        raise ValueError(f"training classes {train_slides.classes} differ from test classes {test.classes}")
    results: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "classes": list(train_slides.classes),
        "models": {},
    }
    for name in models:
        runs = []
        for seed in cfg.seeds:
            selection = select_model(name, train_slides, cfg, seed)
            tested = test.evaluate(selection, cfg.device)
            attention = tested.pop("attention")
            if attention is not None and attention_sink is not None:
                attention_sink(name, seed, tested["slide_ids"], attention)
            tested["auc_ci"] = auc_ci([tested], cfg)
            runs.append(
                {
                    "seed": seed,
                    "lr": selection.lr,
                    "weight_decay": selection.weight_decay,
                    "epoch": selection.epoch,
                    "val": selection.val_metrics,
                    "val_loss": selection.val_loss,
                    "grid": selection.grid,
                    "train_slides": selection.train_slides,
                    "val_slides": selection.val_slides,
                    "test": tested,
                }
            )
        summary = summarise([r["test"] for r in runs], train_slides.classes, cfg)
        results["models"][name] = {"summary": summary, "runs": runs}
    return results
