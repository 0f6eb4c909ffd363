"""Fused Triton kernels for the decode step, one op per file."""
