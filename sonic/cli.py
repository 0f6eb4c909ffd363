"""`sonic generate | chat | serve | bench`: the command line. User mistakes end in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from sonic.errors import SonicError
from sonic.estimate.cli import add_estimate_parser, cmd_estimate

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the fix instead of a usage dump."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def add_model_args(p: argparse.ArgumentParser, tp_note: str = ""):
    p.add_argument("--model", metavar="PATH", help="Hugging Face model folder or .gguf file "
                   "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="working dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--runner", default="auto",
                   help="decode path: graph (fused kernels + CUDA graph), mono (one persistent CUDA kernel "
                        "for greedy decoding), ref (eager PyTorch); auto = graph on cuda, ref on cpu "
                        "(with --tp: ref, or graph on GPUs)")
    add_tp_arg(p, tp_note)


def add_tp_arg(p: argparse.ArgumentParser, note: str = ""):
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help=f"tensor parallel over N devices, one process each{note} (default: 1)")
    p.add_argument("--tp-allreduce", default="ordered", choices=["ordered", "native", "one-shot"],
                   help="with --tp: ordered (torch.distributed, summed in rank order: the same bits on every "
                        "rank), native (NCCL's own) or one-shot (one kernel over NVLink) (default: ordered)")


def add_sampling_args(p: argparse.ArgumentParser):
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), higher = more random")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same text")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")


def add_spec_args(p: argparse.ArgumentParser, mode: bool = True):
    if mode:
        p.add_argument("--speculative", default="off", choices=["off", "ngram", "draft", "auto"],
                       help="speculative decoding: ngram (prompt lookup) or draft (--draft-model) draft "
                            "--spec-max-tokens tokens every step; auto adapts the depth and turns itself off "
                            "where it does not pay (default: off)")
    p.add_argument("--spec-max-tokens", type=int, default=None, metavar="K",
                   help="most tokens drafted per step, 1 to 15 (default: 8; 15 with auto)")
    p.add_argument("--draft-model", metavar="PATH", default=None,
                   help="a smaller model with the same tokenizer, for --speculative draft or auto")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sonic", description="Sonic: latency-first LLM inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True

    gen = sub.add_parser("generate", help="generate text for one prompt, streamed to stdout")
    gen.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    gen.add_argument("--raw", action="store_true",
                     help="send the prompt as-is, without the model's chat template")
    gen.add_argument("--system", default=None, help="system message (chat-template models)")
    add_model_args(gen)
    add_sampling_args(gen)
    add_spec_args(gen)

    chat = sub.add_parser("chat", help="interactive multi-turn chat")
    chat.add_argument("--system", default=None, help="system message")
    add_model_args(chat)
    add_sampling_args(chat)
    add_spec_args(chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a live playground")
    add_model_args(serve, "; requests are then served one at a time (no batching, no logprobs)")
    from sonic.server.cli import add_serve_args  # flags only: the server itself loads on use
    add_serve_args(serve)
    add_spec_args(serve)

    bench = sub.add_parser("bench", help="decode speed per request against the bandwidth ceiling")
    src = bench.add_mutually_exclusive_group()
    src.add_argument("--preset", help="random weights of a named shape (see sonic.presets)")
    src.add_argument("--model", metavar="PATH", help="Hugging Face folder or .gguf file")
    bench.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    bench.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    bench.add_argument("--runner", default="auto",
                       help="runner to measure (auto = graph on cuda; with --tp, the runner of each rank: ref, or graph on GPUs)")
    add_tp_arg(bench, ": one request's decode on N ranks, each rank's bytes per token and the all-reduce "
                      "time measured on the same ranks (not with --compare, --profile, --verify-cost, --tasks)")
    bench.add_argument("--compare", action="append", default=[], metavar="RUNNER",
                       help="also measure this runner, e.g. ref (repeatable)")
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--output-tokens", type=int, default=256)
    bench.add_argument("--context", type=int, default=None,
                       help="total context: the prompt is CONTEXT - output tokens long")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--temperature", type=float, default=0.0,
                       help="decode with this sampling instead of greedy (seeded, so every run draws alike)")
    bench.add_argument("--top-k", type=int, default=0, help="with --temperature: top-k (0 = off)")
    bench.add_argument("--top-p", type=float, default=1.0, help="with --temperature: top-p (1 = off)")
    bench.add_argument("--verify-cost", type=int, default=0, metavar="M",
                       help="also time verifying 1..M tokens in one step (speculative decoding), in plain steps")
    bench.add_argument("--profile", action="store_true",
                       help="with the mono runner: also time every instruction type inside the kernel "
                            "(a profiling build) and report us per layer")
    bench.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                       help="write the report (default path: bench/results/DATE-DEVICE-MODEL.json)")
    bench.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                       help="write a bar chart (default: next to the JSON)")
    tasks = bench.add_argument_group("speculative decoding per task (--tasks)")
    tasks.add_argument("--tasks", action="store_true",
                       help="greedy decode speed per task category with speculation off, at fixed depths and "
                            "auto (the model defaults to the embedded one; --output-tokens caps each answer)")
    tasks.add_argument("--task", action="append", default=None, metavar="NAME",
                       help="only this category (repeatable): code-editing, code-generation, extraction, "
                            "grounded, creative")
    tasks.add_argument("--prompts", type=int, default=3, help="prompts per category (default: 3)")
    tasks.add_argument("--fixed-k", type=int, nargs="+", default=[2, 4, 8, 15], metavar="K",
                       help="fixed draft depths to compare (default: 2 4 8 15)")
    add_spec_args(tasks, mode=False)
    add_estimate_parser(sub)
    return parser


def sampling_from_args(args):
    from sonic.engine.sampling import SamplingParams
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def spec_from_args(args):
    from sonic.spec.speculator import SpecConfig
    return SpecConfig(args.speculative, args.spec_max_tokens, args.draft_model)


def load_engine(args):
    from sonic.engine.generate import Engine
    spec = spec_from_args(args)  # validated before the slow load
    return Engine.load(args.model, device=args.device, dtype=args.dtype, runner=args.runner, spec=spec,
                       tp=args.tp, tp_allreduce=args.tp_allreduce)


def messages_for(prompt: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def cmd_generate(args) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise SonicError("the prompt is empty: pass it as an argument or on stdin")
    sampling = sampling_from_args(args)  # validate flags before the (slow) model load
    engine = load_engine(args)
    tok = engine.text_tokenizer()
    if args.raw or not tok.chat_template:
        ids = tok.encode(prompt)
    else:
        ids = tok.encode_chat(messages_for(prompt, args.system))
    from sonic.chat import print_stream
    try:
        print_stream(engine.stream(ids, args.max_tokens, sampling, args.stop))
    finally:
        engine.close()
    sys.stderr.write(engine.last_stats.summary() + "\n")
    return 0


def cmd_chat(args) -> int:
    from sonic.chat import run_chat
    sampling = sampling_from_args(args)
    engine = load_engine(args)
    try:
        return run_chat(engine, sampling, args.max_tokens, args.stop, args.system)
    finally:
        engine.close()


def cmd_bench(args) -> int:
    from sonic.bench.run import format_table, result_path, run_bench, write_json
    if args.tp != 1:
        from sonic.bench.tp import check_tp_bench
        check_tp_bench(args)
    if args.tasks:
        return cmd_bench_tasks(args)
    if args.preset is None and args.model is None:
        raise SonicError("sonic bench needs --preset NAME (random weights) or --model PATH")
    for flag in ("prompt_tokens", "output_tokens", "repeats"):
        if getattr(args, flag) < 1:
            raise SonicError(f"--{flag.replace('_', '-')} must be at least 1")
    from sonic.bench.run import bench_sampling
    bench_sampling(args)  # a bad temperature, top-k or top-p fails here, before the model loads
    from sonic.engine.runner_graph import MAX_QUERY_TOKENS
    if not 0 <= args.verify_cost <= MAX_QUERY_TOKENS:
        raise SonicError(f"--verify-cost {args.verify_cost}: use 1 to {MAX_QUERY_TOKENS} (0 = off)")
    if args.context is not None and args.context <= args.output_tokens:
        raise SonicError(f"--context {args.context} must exceed --output-tokens {args.output_tokens}")
    if args.tp != 1:
        from sonic.bench.tp import format_tp_table, run_tp_bench
        report = run_tp_bench(args)
        table = format_tp_table(report)
    else:
        from sonic.engine.generate import resolve_runner
        args.runner = resolve_runner(args.runner, args.device)
        if args.profile and "mono" not in [args.runner, *args.compare]:
            raise SonicError("--profile times the monokernel's instructions: add --runner mono (or --compare mono)")
        report = run_bench(args)
        table = format_table(report)
    if args.json is not None:
        sys.stderr.write(f"wrote {write_json(report, args.json or None)}\n")
    if args.plot is not None:
        from sonic.bench.plot import plot_report
        png = args.plot or result_path(report).with_suffix(".png")
        sys.stderr.write(f"wrote {plot_report(report, png)}\n")
    print(table)
    return 0


def cmd_bench_tasks(args) -> int:
    from sonic.bench.run import result_path, write_json
    from sonic.bench.tasks import check_tasks, format_tasks, run_tasks
    from sonic.spec.loop import MAX_DRAFT
    from sonic.spec.speculator import DEFAULT_DEPTH
    if args.spec_max_tokens is None:  # the depth auto may reach
        args.spec_max_tokens = DEFAULT_DEPTH["auto"]
    if args.preset is not None:
        raise SonicError("sonic bench --tasks needs a model with a tokenizer: use --model PATH, not --preset")
    if args.prompts < 1 or args.repeats < 1 or args.output_tokens < 1:
        raise SonicError("--prompts, --repeats and --output-tokens must be at least 1")
    for flag, k in [("--fixed-k", k) for k in args.fixed_k] + [("--spec-max-tokens", args.spec_max_tokens)]:
        if not 1 <= k <= MAX_DRAFT:
            raise SonicError(f"invalid {flag} {k}: use 1 to {MAX_DRAFT} draft tokens")
    check_tasks(args.task)  # before the (slow) model load
    report = run_tasks(args)
    if args.json is not None:
        sys.stderr.write(f"wrote {write_json(report, args.json or result_path(report, suffix='-tasks'))}\n")
    print(format_tasks(report))
    return 0


def cmd_serve(args) -> int:
    from sonic.server.cli import serve
    return serve(args)


COMMANDS = {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve, "bench": cmd_bench,
            "estimate": cmd_estimate}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag already reported in one line
        return int(e.code or 0)
    try:
        return COMMANDS[args.command](args)
    except SonicError as e:
        sys.stdout.flush()
        sys.stderr.write(f"sonic: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
