"""`sonic bench --tasks`: speculative decoding per task category, against plain decoding on the same prompts.

Each prompt runs greedy with speculation off, at each fixed depth and with the adaptive policy, settings
interleaved so drift in the machine's speed hits them alike. Greedy speculative output must equal plain
output token for token; the report says whether it did. Decode tok/s counts from the first token to the
last, so prefill (the same in every setting) stays out of the comparison.
"""
from __future__ import annotations

import statistics

from sonic.bench.task_prompts import SYSTEM, TASKS
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError

WARMUP_TOKENS = 16


def check_tasks(categories: list[str] | None):
    unknown = [c for c in categories or [] if c not in TASKS]
    if unknown:
        raise SonicError(f"unknown task '{unknown[0]}': choose from {', '.join(TASKS)}")


def task_prompts(engine, categories: list[str] | None, per_task: int) -> dict[str, list[list[int]]]:
    check_tasks(categories)
    tok = engine.text_tokenizer()
    system = lambda c: [{"role": "system", "content": SYSTEM[c]}] if c in SYSTEM else []  # noqa: E731
    return {c: [tok.encode_chat(system(c) + [{"role": "user", "content": p}]) for p in TASKS[c][:per_task]]
            for c in (categories or TASKS)}


def settings(engine, proposer, fixed_ks: list[int], max_k: int) -> dict[str, object]:
    """Setting name -> speculator (None = off); `auto` measures its cost table here, once."""
    from sonic.spec.adaptive import FixedDepth
    from sonic.spec.speculator import Speculator, make_policy

    out = {"off": None}
    for k in fixed_ks:
        out[f"k={k}"] = Speculator(engine.runner, proposer, FixedDepth(k))
    out["auto"] = Speculator(engine.runner, proposer, make_policy("auto", max_k, engine.runner, proposer))
    return out


def run_once(engine, speculator, ids: list[int], max_tokens: int) -> dict:
    engine.speculator = speculator
    out = list(engine.generate_ids(ids, max_tokens, SamplingParams()))
    s = engine.last_stats
    spec = s.spec
    return {"ids": out, "tokens": s.output_tokens, "decode_s": s.decode_s,
            "drafted": spec.drafted if spec else 0, "accepted": spec.accepted if spec else 0,
            "steps": spec.steps if spec else 0}


def measure(engine, setups: dict, prompts: dict, max_tokens: int, repeats: int) -> dict[tuple[str, str], list]:
    """(category, setting) -> one run per prompt, the median-time one of `repeats`."""
    first = next(iter(prompts.values()))[0]
    for spec in setups.values():  # compile kernels and capture graphs outside the timed runs
        run_once(engine, spec, first, WARMUP_TOKENS)
    runs: dict[tuple[str, str], list] = {}
    for category, id_lists in prompts.items():
        for ids in id_lists:
            for name, spec in setups.items():
                tries = sorted((run_once(engine, spec, ids, max_tokens) for _ in range(repeats)),
                               key=lambda r: r["decode_s"])
                runs.setdefault((category, name), []).append(tries[len(tries) // 2])
    engine.speculator = None
    return runs


def summarise(runs: dict, categories: list[str], names: list[str]) -> list[dict]:
    rows = []
    for category in categories:
        plain = runs[(category, "off")]
        base = None
        for name in names:
            rs = runs[(category, name)]
            steps = sum(max(r["tokens"] - 1, 0) for r in rs)
            seconds = sum(r["decode_s"] for r in rs)
            tok_s = steps / seconds if seconds > 0 else 0.0
            base = tok_s if name == "off" else base
            drafted, accepted, verifies = (sum(r[key] for r in rs) for key in ("drafted", "accepted", "steps"))
            rows.append({"category": category, "setting": name, "tok_s": tok_s,
                         "speedup": tok_s / base if base else 0.0, "output_tokens": sum(r["tokens"] for r in rs),
                         "drafted": drafted, "accepted": accepted, "verify_steps": verifies,
                         "acceptance_rate": accepted / drafted if drafted else 0.0,
                         "mean_accepted": accepted / verifies if verifies else 0.0,
                         "identical": all(r["ids"] == p["ids"] for r, p in zip(rs, plain))})
    for name in names:
        mine = [r for r in rows if r["setting"] == name and r["category"] in categories]
        rows.append({"category": "mean", "setting": name, "speedup": statistics.mean(r["speedup"] for r in mine),
                     "tok_s": statistics.mean(r["tok_s"] for r in mine),
                     "identical": all(r["identical"] for r in mine)})
    return rows


def run_tasks(args) -> dict:
    from sonic.bench.run import matvec_setting, report_header
    from sonic.engine.generate import Engine
    from sonic.weights.loader import resolve_model_path

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, runner=args.runner)
    if args.draft_model:
        from sonic.spec.draft import load_draft
        cfg = engine.engine_config
        proposer = load_draft(args.draft_model, engine.config, cfg.torch_dtype, cfg.device, cfg.runner)
    else:
        from sonic.spec.ngram import NgramProposer
        proposer = NgramProposer()
    prompts = task_prompts(engine, args.task, args.prompts)
    setups = settings(engine, proposer, args.fixed_k, args.spec_max_tokens)
    runs = measure(engine, setups, prompts, args.output_tokens, args.repeats)
    source = resolve_model_path(args.model)
    report = report_header(source.stem if source.is_file() else source.name, engine.engine_config.device,
                           engine.engine_config.torch_dtype)
    report.update({
        "benchmark": "tasks", "runner": engine.engine_config.runner, "proposer": proposer.name,
        "options": {"max_tokens": args.output_tokens, "repeats": args.repeats, "prompts_per_task": args.prompts,
                    "spec_max_tokens": args.spec_max_tokens, "fixed_k": args.fixed_k,
                    "draft_model": args.draft_model, "SONIC_MATVEC": matvec_setting()},
        "verify_cost": list(setups["auto"].policy.costs.verify_steps),
        "draft_cost": setups["auto"].policy.costs.draft_step,
        "lone_step_cost": setups["auto"].policy.costs.lone_step,
        "results": summarise(runs, list(prompts), list(setups)),
    })
    return report


def format_tasks(report: dict) -> str:
    cost = ", ".join(f"{c:.2f}" for c in report["verify_cost"])
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}, {report['runner']} runner), commit "
             f"{report['commit']}, proposer {report['proposer']}, greedy, up to {report['options']['max_tokens']} "
             f"tokens",
             f"verification cost of 1..{len(report['verify_cost'])} tokens in plain steps: {cost}; "
             f"a plain step on its own: {report.get('lone_step_cost', 1.0):.2f}",
             f"{'category':<17}{'setting':<8}{'tok/s':>9}{'speed-up':>10}{'accept':>8}{'acc/step':>9}"
             f"{'tokens':>8}  same"]
    for r in report["results"]:
        spec = r["setting"] != "off" and r["category"] != "mean"
        accept = f"{100 * r['acceptance_rate']:>7.0f}%" if spec else f"{'-':>8}"
        per_step = f"{r['mean_accepted']:>9.2f}" if spec else f"{'-':>9}"
        tokens = f"{r['output_tokens']:>8}" if "output_tokens" in r else f"{'':>8}"
        lines.append(f"{r['category']:<17}{r['setting']:<8}{r['tok_s']:>9.1f}{r['speedup']:>9.2f}x{accept}"
                     f"{per_step}{tokens}  {'yes' if r['identical'] else 'NO'}")
    return "\n".join(lines)
