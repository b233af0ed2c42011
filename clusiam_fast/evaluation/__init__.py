"""Evaluation of learned representations, as in the CluSiam paper (the bags it reads come from
:mod:`clusiam_fast.extraction`).

- :mod:`.metrics`: scikit-learn metrics (accuracy, one-vs-rest AUC, Rand index, ARI, F1).
- :mod:`.clustering`: assigner argmax vs K-means with the same K.
- :mod:`.knn`: chunked top-1 cosine KNN.
- :mod:`.cluster_map`: cluster assignments painted over slide thumbnails.
- :mod:`.labels`: slide / patch label tables.
- :mod:`.bag_checks`: bags left out by name (no patches, NaN/Inf features).
- :mod:`.pipeline`: :func:`run_evaluation` (``python -m clusiam_fast.evaluate``), :mod:`.report`, :mod:`.plots`.

Submodules import their heavy dependencies (scikit-learn, h5py, matplotlib) lazily.
"""
