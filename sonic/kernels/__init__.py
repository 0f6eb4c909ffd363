"""GPU kernels. Nothing here is imported unless a fast path is asked for."""
