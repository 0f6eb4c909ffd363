"""Tensor parallelism for one request: weights sharded over ranks, two all-reduces per layer.

`tp.py` turns the full weights into one rank's shard, `allreduce.py` holds the collectives
(`one_shot.py`: the GPU kernel, imported only when chosen; `bench_allreduce.py` times them),
`vocab.py` picks tokens from a vocabulary split over ranks, `runner.py` decodes on one rank,
`worker.py` is a worker process and `launch.py` starts and drives them from rank 0; `shard_cost.py`
counts the bytes each rank reads per token.
"""
