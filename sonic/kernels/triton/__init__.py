"""Fused Triton kernels for the decode step, one op per file."""

MAX_ROWS = 16  # query rows one launch takes: a decode step, or a speculative verification of 15 drafts

