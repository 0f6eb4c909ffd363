"""Which fused matvec the fast path runs: SONIC_MATVEC=triton (default) or cuda.

triton: CUDA-core kernels, the fastest one-token step; M query rows cost about M times the
arithmetic, so verifying 8 drafts costs several steps. cuda: the tensor-core kernel
(kernels/cuda/matvec.py): a one-token step pays a little more, 16 rows cost about what one row
costs. Both compute every row exactly as a one-row call, so speculation never changes the text of
either; the choice is per engine, because the two round differently. A call the CUDA kernel does not
take (an odd K, a GPU other than Hopper, no nvcc) runs on Triton whatever M is.
"""
from __future__ import annotations

import os

from sonic.errors import SonicError

CHOICES = ("triton", "cuda")


def choice() -> str:
    value = os.environ.get("SONIC_MATVEC", "triton")
    if value not in CHOICES:
        raise SonicError(f"SONIC_MATVEC={value!r} is not a matvec backend: use one of {', '.join(CHOICES)}")
    return value


class Matvec:
    """The fused matvec and the greedy LM head of one runner, on the chosen backend."""

    def __init__(self, backend: str | None = None):
        self.backend = backend or choice()
        if self.backend == "cuda":
            from sonic.kernels.cuda import matvec as cmv
            if not cmv.available():
                raise SonicError("SONIC_MATVEC=cuda needs nvcc (the CUDA toolkit) to build its kernel: "
                                 "install it, or use SONIC_MATVEC=triton")

    def _cuda(self, x, w, out, kw) -> bool:
        if self.backend != "cuda":
            return False
        from sonic.kernels.cuda import matvec as cmv
        return cmv.supports(x, w, out, norm_weight=kw.get("norm_weight"), silu_mul=kw.get("silu_mul", False),
                            index=kw.get("index"), gather=kw.get("gather", "x"), residual=kw.get("residual"))

    def __call__(self, x, w, out, **kw):
        if self._cuda(x, w, out, kw):
            from sonic.kernels.cuda.matvec import matvec
            return matvec(x, w, out, **kw)
        from sonic.kernels.triton.matvec import fused_matvec
        return fused_matvec(x, w, out, **kw)

    def lm_head_argmax(self, x, w, logits, out_ids, *, norm_weight, eps, advance=None):
        """The greedy LM head (see lm_head_sample.lm_head_argmax) on this backend."""
        from sonic.kernels.triton.lm_head_sample import lm_head_argmax, reduce_argmax, workspace
        if not self._cuda(x, w, logits, dict(norm_weight=norm_weight)):
            return lm_head_argmax(x, w, logits, out_ids, norm_weight=norm_weight, eps=eps, advance=advance)
        from sonic.kernels.cuda import matvec as cmv
        m, v = logits.shape
        partials = workspace(m, cmv.num_tiles(v), logits.device, "lm_head_cuda")
        cmv.matvec(x, w, logits, norm_weight=norm_weight, eps=eps, argmax_partials=partials)
        return reduce_argmax(*partials, out_ids, advance=advance)
