"""Triton kernels of neuinv, installed as ``neuinv.kernels``."""
