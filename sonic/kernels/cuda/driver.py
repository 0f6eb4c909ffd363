"""The few CUDA driver calls a precompiled kernel needs (ctypes, so no extension module is built):
load a cubin, look up its kernels, launch one on torch's current stream (graph capture included),
optionally as a programmatic dependent launch or a cooperative one; host memory the GPU can write."""
from __future__ import annotations

import ctypes
import functools

import torch

_COOPERATIVE = 2                         # CU_LAUNCH_ATTRIBUTE_COOPERATIVE
_CLUSTER_DIMENSION = 4                   # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
_PROGRAMMATIC_STREAM_SERIALIZATION = 6   # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8       # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


class _LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: an id, then a 64-byte value union (a flag, or a cluster's x, y, z).
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_bytes", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)),
                ("num_attrs", ctypes.c_uint)]


@functools.lru_cache(maxsize=None)
def _lib():
    return ctypes.CDLL("libcuda.so.1")


def _check(result: int, what: str):
    if result != 0:
        msg = ctypes.c_char_p()
        _lib().cuGetErrorString(result, ctypes.byref(msg))
        raise RuntimeError(f"CUDA driver: {what} failed: {msg.value.decode() if msg.value else result}")


def _ensure_context(device_index: int):
    """torch's runtime uses the primary context; make it current on this thread for driver calls."""
    ctx = ctypes.c_void_p()
    _check(_lib().cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if not ctx.value:
        torch.cuda.set_device(device_index)
        torch.cuda.current_stream(device_index)  # initialises torch's context on this thread
        dev = ctypes.c_int()
        _check(_lib().cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
        _check(_lib().cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _check(_lib().cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


class Module:
    """A loaded cubin on one device."""

    def __init__(self, cubin: bytes, device_index: int):
        _ensure_context(device_index)
        self.device_index = device_index
        self._image = ctypes.create_string_buffer(cubin, len(cubin))
        self.handle = ctypes.c_void_p()
        _check(_lib().cuModuleLoadData(ctypes.byref(self.handle), self._image), "cuModuleLoadData")
        self._functions: dict[str, ctypes.c_void_p] = {}

    def function(self, name: str, dynamic_smem: int = 0) -> ctypes.c_void_p:
        if name not in self._functions:
            fn = ctypes.c_void_p()
            _check(_lib().cuModuleGetFunction(ctypes.byref(fn), self.handle, name.encode()),
                   f"cuModuleGetFunction({name})")
            self._functions[name] = fn
        fn = self._functions[name]
        if dynamic_smem > 48 * 1024:
            _check(_lib().cuFuncSetAttribute(fn, _MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic_smem),
                   f"cuFuncSetAttribute({name}, {dynamic_smem} bytes of shared memory)")
        return fn


_MAX_THREADS_PER_BLOCK = 0  # CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
_NUM_REGS = 4               # CU_FUNC_ATTRIBUTE_NUM_REGS


def block_limits(fn: ctypes.c_void_p) -> tuple[int, int]:
    """(most threads one block of `fn` can have, registers per thread) as compiled."""
    out = []
    for attr in (_MAX_THREADS_PER_BLOCK, _NUM_REGS):
        value = ctypes.c_int()
        _check(_lib().cuFuncGetAttribute(ctypes.byref(value), attr, fn), "cuFuncGetAttribute")
        out.append(value.value)
    return out[0], out[1]


def launch(fn: ctypes.c_void_p, grid: int, block: int, shared_bytes: int, params: ctypes.Structure,
           device_index: int, pdl: bool, cooperative: bool = False, cluster: int = 1):
    """One launch of `fn(params)` on torch's current stream of the device. A cooperative launch fails
    with an error, instead of hanging, when the grid cannot be resident all at once. cluster > 1
    groups that many consecutive blocks into a cluster (distributed shared memory)."""
    _ensure_context(device_index)
    cfg = _LaunchConfig()
    cfg.grid[:] = (grid, 1, 1)
    cfg.block[:] = (block, 1, 1)
    cfg.shared_bytes = shared_bytes
    cfg.stream = torch.cuda.current_stream(device_index).cuda_stream
    wanted = [(a, v) for a, v, on in ((_PROGRAMMATIC_STREAM_SERIALIZATION, (1,), pdl),
                                      (_COOPERATIVE, (1,), cooperative),
                                      (_CLUSTER_DIMENSION, (cluster, 1, 1), cluster > 1)) if on]
    attrs = (_LaunchAttribute * max(1, len(wanted)))(
        *[_LaunchAttribute(id=a, value=(ctypes.c_uint * 16)(*v)) for a, v in wanted])
    cfg.attrs = attrs if wanted else None
    cfg.num_attrs = len(wanted)
    args = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(params), ctypes.c_void_p))
    _check(_lib().cuLaunchKernelEx(ctypes.byref(cfg), fn, args, None), "cuLaunchKernelEx")


class HostMapped:
    """Pinned host memory mapped into the device's address space: the GPU writes it while a kernel
    runs and the host reads it without a sync (tokens as they are chosen), or the other way round."""

    def __init__(self, nbytes: int, device_index: int):
        import numpy as np

        _ensure_context(device_index)
        self.nbytes = nbytes
        ptr = ctypes.c_void_p()
        # CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP
        _check(_lib().cuMemHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), 0x1 | 0x2), "cuMemHostAlloc")
        self._ptr = ptr
        dev = ctypes.c_uint64()
        _check(_lib().cuMemHostGetDevicePointer_v2(ctypes.byref(dev), ptr, 0), "cuMemHostGetDevicePointer")
        self.device_ptr = dev.value
        self.bytes = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr.value))

    def view(self, dtype, offset: int = 0, count: int | None = None):
        """A numpy view of part of the memory (reads see the device's writes as they land)."""
        import numpy as np
        itemsize = np.dtype(dtype).itemsize
        count = (self.nbytes - offset) // itemsize if count is None else count
        return self.bytes[offset:offset + count * itemsize].view(dtype)

    def __del__(self):
        if getattr(self, "_ptr", None) and self._ptr.value:
            _lib().cuMemFreeHost(self._ptr)
            self._ptr = None
