"""Python side of the compiled ops: fake kernels and autograd (see registration.py)."""
