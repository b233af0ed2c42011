"""Small helpers shared across clusiam_fast (atomic writes, optional dependencies)."""
