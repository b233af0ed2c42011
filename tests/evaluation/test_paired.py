"""The paired bootstrap of a metric difference, checked replicate by replicate against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from clusiam_fast.evaluation.bootstrap import replicate_weights
from clusiam_fast.evaluation.paired import paired_bootstrap


@pytest.fixture(scope="module")
def two_methods(crc_random_bags):
    """Test probabilities of two logistic regressions (strong and weak regularisation) on the CRC tiles."""
    (bag,) = [b for b in crc_random_bags if b.slide_id.endswith("kather2016")]
    x = np.asarray(bag.features)
    y = np.asarray([int(p.split("_label_")[1][0]) for p in bag.paths])
    test = np.arange(len(y)) % 2 == 1
    probs = [LogisticRegression(C=c, max_iter=2000).fit(x[~test], y[~test]).predict_proba(x[test]) for c in (1e-4, 1.0)]
    return y[test], probs


def test_the_difference_and_its_interval_are_sklearns_on_shared_resamples(two_methods):
    y, (a, b) = two_methods
    for metric in ("auc", "balanced_accuracy"):
        got = paired_bootstrap(y, [a], [b], metric=metric, n_boot=50, seed=3)

        def score(p, idx, metric=metric):
            if metric == "auc":
                return roc_auc_score(y[idx], p[idx], multi_class="ovr", average="macro")
            return balanced_accuracy_score(y[idx], p[idx].argmax(1))

        everything = np.arange(len(y))
        assert got["difference"] == pytest.approx(score(a, everything) - score(b, everything))
        reps = [
            score(a, idx) - score(b, idx)
            for idx in (np.repeat(everything, w.astype(int)) for w in replicate_weights(y, None, 50, seed=3))
        ]
        assert [got["low"], got["high"]] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))
        assert 0 <= got["p_value"] <= 1 and got["n_units"] == len(y)
    same = paired_bootstrap(y, [a, b], [a, b], n_boot=200)
    assert same["difference"] == same["low"] == same["high"] == 0 and same["p_value"] == 1
    with pytest.raises(ValueError, match="same test units"):
        paired_bootstrap(y, [a], [b[:-1]])
