"""Hand-written CUDA kernels, compiled with nvcc at first use and launched through the driver API.

Only the tensor-core matvec lives here: Triton's tensor-core code stages the weights through shared
memory, which costs a one-token step too much, and its CUDA-core code costs M times the work for M
query rows. Everything here is optional: without nvcc or a Hopper GPU the Triton kernels run instead.
"""
