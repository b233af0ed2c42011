"""The trainer's parts: loss, schedule, sampler, seeded augmentation, stats, monitors, config, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clusiam_fast.choices import EMA_METHOD_NAMES, METHOD_NAMES
from clusiam_fast.data import PAPER_RECIPE, TwoViews, dataset_mean_std, find_images, paper_augmentation
from clusiam_fast.models import PairOutput, build_model
from clusiam_fast.ops import sample_gumbel as gumbel_noise
from clusiam_fast.train import build_parser, config_from_args
from clusiam_fast.training import TrainConfig, training_loss
from clusiam_fast.training.ddp import DistContext
from clusiam_fast.training.loader import ResumableSampler, TwoViewDataset, open_source
from clusiam_fast.training.monitors import EpochMeter, collapse_std, rankme, step_monitors
from clusiam_fast.training.norm_stats import load_or_compute_stats
from clusiam_fast.training.schedule import build_optimizer, cosine_lr, resolve_schedule, scaled_lr, set_lr


def _pair(n=6, d=16, k=None, seed=0) -> PairOutput:
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(n, d, generator=g) for _ in range(6)]
    a = [torch.randn(n, k, generator=g, requires_grad=True) for _ in range(2)] if k else [None, None]
    return PairOutput(*t, *a)


@pytest.fixture(scope="module")
def models():
    """One small model per method: the method interface the trainer calls."""
    return {m: build_model(m, num_clusters=4, out_dim=16, pred_hidden=8, cluster_hidden=8) for m in METHOD_NAMES}


def test_each_method_file_defines_its_invariance_loss_and_reduction(models):
    out = _pair()
    c12 = F.cosine_similarity(out.p1, out.t2).mean()
    c21 = F.cosine_similarity(out.p2, out.t1).mean()
    simsiam_form, byol_form = -(c12 + c21), 2 - c12 - c21  # the published sums
    for method in ("clusiam", "simsiam"):
        torch.testing.assert_close(models[method].invariance_loss(out, "sum"), simsiam_form)
        torch.testing.assert_close(models[method].invariance_loss(out, "mean"), simsiam_form / 2)
    for method in ("clubyol", "byol"):
        torch.testing.assert_close(models[method].invariance_loss(out, "sum"), byol_form)
        torch.testing.assert_close(models[method].invariance_loss(out, "mean"), byol_form / 2)


def test_only_momentum_methods_change_after_an_optimizer_step(models):
    for method, model in models.items():
        before = [p.clone() for p in model.state_dict().values()]
        with torch.no_grad():
            model.backbone.conv1.weight.add_(1.0)
        model.after_optimizer_step()
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
        # the online conv1 always; the EMA target's conv1 too for the momentum methods
        assert changed == (2 if method in EMA_METHOD_NAMES else 1), method


def test_training_loss_mixes_terms_and_noise_is_optional():
    out = _pair(k=5)
    inv = -F.cosine_similarity(out.p1, out.t2).mean()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = training_loss(out, inv, alpha=0.3, generator=g1, impl="reference")
    b = training_loss(out, inv, alpha=0.3, generator=g2, impl="reference")
    torch.testing.assert_close(a.total, 0.7 * a.invariance + 0.3 * a.cluster)
    assert torch.equal(a.assign_noisy, b.assign_noisy)  # same generator state, same noise
    plain = training_loss(out, inv, alpha=0.3, gumbel=False, impl="reference")
    logits = torch.cat([out.a1, out.a2])
    assert torch.equal(plain.assign_noisy, logits.argmax(1)) and torch.equal(plain.assign, logits.argmax(1))
    plain.total.backward()
    assert out.a1.grad is not None and out.a1.grad.abs().sum() > 0
    none = training_loss(_pair(), inv, alpha=0.0)
    assert none.cluster == 0 and none.assign is None and none.total is inv


def test_gumbel_noise_is_standard_gumbel():
    g = gumbel_noise(torch.empty(200_000), torch.Generator().manual_seed(0))
    assert abs(g.mean().item() - 0.5772) < 0.02 and abs(g.std().item() - math.pi / math.sqrt(6)) < 0.02


def test_lr_schedule_and_fixed_predictor_lr():
    assert scaled_lr(0.05, 512) == pytest.approx(0.1)
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0)
    model = build_model("clusiam", num_clusters=4)
    opt = build_optimizer(model, 0.1, 0.9, 1e-4, fix_pred_lr=True)
    set_lr(opt, 0.01, 0.1)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"encoder": 0.01, "predictor": 0.1, "cluster": 0.01}


def test_schedule_spans_the_run_and_a_longer_resume_re_spans_it():
    cfg = TrainConfig(epochs=3, batch_size=8).resolved()
    assert resolve_schedule(cfg, 6, None) == (18, "--epochs 3 x 6 steps", None)
    done = {"step": 6, "config": {"schedule_steps": None}, "schedule": {"steps": 6, "source": "--epochs 1 x 6 steps"}}
    steps, source, notice = resolve_schedule(cfg, 6, done)
    assert (steps, source) == (18, "--epochs 3 x 6 steps (extended from 6 at step 6)")
    assert f"lr {cosine_lr(scaled_lr(0.05, 8), 6, 18):.4g} at step 6" in notice
    again = {**done, "step": 9, "schedule": {"steps": 18, "source": source}}  # the next resume keeps it
    assert resolve_schedule(cfg, 6, again) == (18, f"{source}, kept from the checkpoint", None)
    short = TrainConfig(epochs=3, batch_size=8, schedule_steps=12).resolved()  # explicit: used, and said
    steps, _, notice = resolve_schedule(short, 6, done)
    assert steps == 12 and "steps 13 to 18 train at lr 0" in notice


def test_sampler_splits_ranks_and_skips_batches():
    ranks = [ResumableSampler(50, batch_size=4, seed=1, rank=r, world=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    idx = [[i for i, _ in s] for s in ranks]
    assert len(idx[0]) == len(idx[1]) == 25 and not set(idx[0]) & set(idx[1])
    ranks[0].set_epoch(4)
    assert [i for i, _ in ranks[0]] != idx[0]  # a new order each epoch
    ranks[0].set_epoch(3, skip=2)
    assert [i for i, _ in ranks[0]] == idx[0][8:] and len(ranks[0]) == 17


class _Images:
    def __init__(self, n=4):
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == 1:
            raise OSError("cannot read image b.png")
        return self.images[i]


def test_seeded_two_views_are_reproducible_and_bad_items_replaced():
    ds = TwoViewDataset(_Images(), TwoViews(paper_augmentation(32, [0.5] * 3, [0.25] * 3)))
    v1, v2, skipped = ds[(0, 123)]
    w1, w2, _ = ds[(0, 123)]
    assert v1.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # seed fixes both views
    assert not torch.equal(v1, v2)  # the two views are independent draws
    assert not torch.equal(ds[(0, 124)][0], v1)
    state = torch.get_rng_state()
    r1, _, skipped = ds[(1, 5)]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert skipped and "b.png" in skipped[0] and torch.equal(r1, ds[(2, 5)][0])  # replaced by the next image


def test_paper_recipe_numbers():
    assert PAPER_RECIPE.scale == (0.2, 1.0) and PAPER_RECIPE.jitter == (0.4, 0.4, 0.4, 0.1)
    assert (PAPER_RECIPE.p_jitter, PAPER_RECIPE.p_gray, PAPER_RECIPE.p_blur) == (0.8, 0.2, 0.5)
    assert PAPER_RECIPE.blur_sigma == (0.1, 2.0)


def test_mean_std_matches_numpy_on_real_patches(pcam_dir):
    files = find_images(pcam_dir / "valid" / "1")[:12]
    mean, std = dataset_mean_std(files, max_images=100)
    pixels = np.concatenate([np.asarray(Image.open(f).convert("RGB"), np.float64).reshape(-1, 3) / 255 for f in files])
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-7)


def test_find_images_recursive_sorted_hidden_skipped(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("b/c/z.PNG", "a.jpg", "b/y.tiff", ".x.png", ".hidden/q.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.jpg", "b/c/z.PNG", "b/y.tiff"]
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        find_images(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not a tiler manifest"):
        open_source(tmp_path / "notes.txt")


def test_norm_stats_cached_in_out_and_refreshed_for_new_data(pcam_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in find_images(pcam_dir / "valid" / "0")[:5]:
        (data / f.name).symlink_to(f)
    first = load_or_compute_stats(tmp_path / "out", open_source(data), max_images=10, seed=0, workers=0, progress=False)
    assert (tmp_path / "out" / "norm_stats.json").is_file()
    again = load_or_compute_stats(tmp_path / "out", open_source(data), max_images=10, seed=0, workers=0, progress=False)
    assert again == first
    (data / "extra.jpg").symlink_to(find_images(pcam_dir / "valid" / "1")[0])
    changed = load_or_compute_stats(
        tmp_path / "out", open_source(data), max_images=10, seed=0, workers=0, progress=False
    )
    assert changed["fingerprint"] != first["fingerprint"] and changed["mean"] != first["mean"]


def test_collapse_monitor_and_active_clusters():
    z = torch.randn(512, 256, generator=torch.Generator().manual_seed(0))
    assert 0.9 < collapse_std(z).item() < 1.1
    assert collapse_std(torch.ones(512, 256) + 1e-4 * z).item() < 0.05
    meter = EpochMeter(6, torch.device("cpu"), feature_dim=16, window=4)
    pair = _pair(k=6)
    terms = training_loss(
        pair, -F.cosine_similarity(pair.p1, pair.t2).mean(), alpha=0.5, gumbel=False, impl="reference"
    )
    meter.update(terms, step_monitors(pair._replace(h1=pair.z1)), 6)
    row = meter.summary(DistContext())
    assert row["active_clusters"] == len(set(terms.assign.tolist()))
    assert row["loss"] == pytest.approx(terms.total.item())
    assert row["backbone_std"] == pytest.approx(collapse_std(pair.z1).item())
    assert row["backbone_rankme"] == pytest.approx(rankme(pair.z1[-4:]).item())  # the window: the last 4 rows


def test_config_defaults_per_method_and_errors():
    assert TrainConfig(method="clusiam").resolved().alpha == 0.5
    cb = TrainConfig(method="clubyol").resolved()
    assert (cb.alpha, cb.out_dim, cb.pred_hidden, cb.ema_momentum, cb.fix_pred_lr) == (0.9, 256, 4096, 0.99, False)
    assert TrainConfig(method="simsiam").resolved().fix_pred_lr is True
    with pytest.raises(ValueError, match="simsiam has none"):
        TrainConfig(method="simsiam", alpha=0.5).resolved()
    with pytest.raises(ValueError, match="--alpha must be in"):
        TrainConfig(alpha=1.5).resolved()
    with pytest.raises(ValueError, match="--method must be one of"):
        TrainConfig(method="dino").resolved()


def test_cli_help_explains_every_flag_and_maps_to_config(tmp_path):
    parser = build_parser()
    text = parser.format_help()
    fields = set(TrainConfig.__dataclass_fields__)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            assert action.dest in fields | {"demo", "config", "print_config"}, action.dest
    for flag in ("--no-gumbel", "--alpha", "--projector-end", "--resume", "--export-backbone", "--loader", "--amp"):
        assert flag in text
    (tmp_path / "data").mkdir()  # DATA is resolved here (its images listed, not read); --out outside it checked
    (tmp_path / "data" / "a.png").write_bytes(b"")
    cfg = config_from_args(
        [
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o"),
            "--no-gumbel",
            "--alpha",
            "1.0",
            "--projector-end",
            "linear",
            "--no-fix-pred-lr",
        ]
    )
    assert (cfg.gumbel, cfg.alpha, cfg.projector_end, cfg.fix_pred_lr, cfg.crop_size) == (
        False,
        1.0,
        "linear",
        False,
        224,
    )
