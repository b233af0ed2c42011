"""``python -m clusiam_fast.study CONFIG.yaml``: compare methods on your data, one command.

Trains several methods (CluSiam, SimSiam, CluSiam with another K, no Gumbel, an
untrained baseline, ...) with the same data, seed and budget, extracts their features
and evaluates them on the same patches and bags, then writes one comparison report
(``report.md``, ``report.json``, ``study.png``): KNN F1 with bootstrap intervals,
assigner vs K-means (RI, ARI), MIL AUC and the training monitors over the steps: the
paper's Tables 1-4 and Figure 4 for your data.

- :mod:`.config`: read and check the YAML (every error names its key, before any training);
- :mod:`.datasets`: the training sample and the evaluation sets built from class folders;
- :mod:`.runner`: the steps, run as subprocesses, each skipped when done with the same settings;
- :mod:`.records`: their done records (the cohort's), and the markers of older studies;
- :mod:`.report`: the comparison.
"""

from .config import StudyConfig, StudyConfigError, load_config

__all__ = ["StudyConfig", "StudyConfigError", "load_config"]
