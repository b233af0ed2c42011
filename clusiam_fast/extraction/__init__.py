"""Feature extraction: one CLAM-compatible feature bag per slide (``python -m clusiam_fast.extract``).

- :mod:`.pipeline`: :func:`~.pipeline.extract`, the cohort of slides and the summary (extract.json).
- :mod:`.sources`: what the patches come from (a tiler manifest, coordinate files or an image folder).
- :mod:`.slide_encoding`: what a worker does with one slide (read, encode, write its bag).
- :mod:`.encoders`: what encodes: a trainer checkpoint or exported backbone (:mod:`.encoders.checkpoint`),
  or a timm / torchvision model with local weights (:mod:`.encoders.baselines`).
"""
