"""Run a function on N gloo ranks in spawned processes and collect what each rank returns."""
from __future__ import annotations

import torch

from sonic.dist.allreduce import init_group, make_communicator
from sonic.dist.launch import free_port, main_module_hidden
from sonic.dist.runner import ShardRunner
from sonic.dist.tp import ShardPlan, build_shard, tp_problem
from sonic.engine.sampling import SamplingParams
from sonic.weights.random import random_state_dict

PROMPT_LEN, DECODE_STEPS, GREEDY_TOKENS = 10, 4, 8


def run_ranks(world: int, fn, *args, timeout_s: float = 120.0) -> list:
    """fn(rank, world, port, *args) on `world` spawned ranks; the list of their return values."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(results, fn, r, world, port, args), daemon=True)
             for r in range(world)]
    with main_module_hidden():
        for p in procs:
            p.start()
    try:
        out = dict(results.get(timeout=timeout_s) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = {r: v for r, v in out.items() if isinstance(v, BaseException)}
    assert not errors, errors
    return [out[r] for r in range(world)]


def _entry(results, fn, rank, world, port, args):
    torch.set_num_threads(1)
    try:
        results.put((rank, fn(rank, world, port, *args)))
    except BaseException as e:  # noqa: BLE001 - travels back to the test
        results.put((rank, RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")))


def shard_checks(rank: int, world: int, port: int, configs: dict, seed: int,
                 device: str = "cpu", allreduce: str = "ordered") -> dict:
    """Per config: teacher-forced logits, decode-step logits and greedy tokens of the sharded model."""
    if device == "cuda":
        device = f"cuda:{rank}"
        torch.cuda.set_device(device)
    init_group(rank, world, port, device, timeout_s=30)
    comm = make_communicator(allreduce)
    out = {}
    for name, config in configs.items():
        problem = tp_problem(config, world)
        if problem is not None:
            out[name] = problem
            continue
        plan = ShardPlan(config, rank, world)
        state = random_state_dict(config, seed=seed)
        runner = ShardRunner(build_shard(plan, state, comm, device=device), plan, comm)
        ids = torch.randint(0, config.vocab_size, (PROMPT_LEN + DECODE_STEPS,),
                            generator=torch.Generator().manual_seed(seed)).tolist()
        forced = runner.full_logits(runner.forward_all(ids)).cpu()
        runner.reserve(len(ids))
        steps = [runner.full_logits(runner.prefill(ids[:PROMPT_LEN]))]
        steps += [runner.full_logits(runner.decode(torch.tensor(t, device=device))) for t in ids[PROMPT_LEN:-1]]
        steps = [s.cpu() for s in steps]
        greedy = list(runner.generate(ids[:PROMPT_LEN], GREEDY_TOKENS, SamplingParams()))
        sampled = list(runner.generate(ids[:PROMPT_LEN], GREEDY_TOKENS,
                                       SamplingParams(temperature=1.0, top_k=20, seed=seed)))
        out[name] = {"forced": forced.numpy(), "steps": torch.stack(steps).numpy(), "greedy": greedy,
                     "sampled": sampled, "kv_heads": runner.cache.k.shape[2]}
    return out


def allreduce_checks(rank: int, world: int, port: int, sizes: list[int]) -> dict:
    """Ordered and native all-reduce of per-rank random data of several sizes and dtypes."""
    init_group(rank, world, port, "cpu", timeout_s=30)
    ordered, native = make_communicator("ordered"), make_communicator("native")
    out = {}
    for size in sizes:
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(size, generator=torch.Generator().manual_seed(1000 * rank + size)).to(dtype)
            out[size, str(dtype)] = (x.float().numpy(), ordered(x).float().numpy(), native(x).float().numpy())
    return out



def graph_checks(rank: int, world: int, port: int, configs: dict, seed: int, prompt: list[int],
                 max_tokens: int, device: str = "cpu", allreduce: str = "ordered") -> dict:
    """Per config, on the fused kernels over the shard (eagerly under the interpreter, one CUDA graph a
    step on a GPU, in bf16): teacher-forced logits of the prompt, greedy tokens and `flag_due` after each."""
    from sonic.dist.graph_runner import ShardGraphRunner
    dtype = torch.float32
    if device == "cuda":
        device, dtype = f"cuda:{rank}", torch.bfloat16
        torch.cuda.set_device(device)
    init_group(rank, world, port, device, timeout_s=60)
    comm = make_communicator(allreduce)
    out = {}
    for name, config in configs.items():
        plan = ShardPlan(config, rank, world)
        model = build_shard(plan, random_state_dict(config, seed, dtype, device), comm, dtype, device)
        runner = ShardGraphRunner(model, plan, comm, max_len=64, require_cuda=device != "cpu")
        runner.reserve(len(prompt))
        forced = runner.full_logits(runner.forward_tokens(prompt, 0))
        tokens, due = [], []
        for token in runner.generate(prompt, max_tokens, SamplingParams()):
            tokens.append(token)
            due.append(runner.flag_due)
        out[name] = {"forced": forced.float().cpu().numpy(), "greedy": tokens, "flag_due": due}
    return out
