"""`python -m sonic.mono.prebuild`: compile the monokernels `--runner mono` will load for some models
(the decode build and the verification builds) into the kernel cache ahead of first use, in
parallel, so the first request of a machine does not wait a minute per build.

    python -m sonic.mono.prebuild llama-3.2-1b qwen3-1.7b --sms 132
    SONIC_CACHE_DIR=/opt/sonic-cache python -m sonic.mono.prebuild /models/llama  # a folder or .gguf
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from sonic.errors import SonicError

EXIT_USAGE = 2


def programs(model: str, sms: int, verify: bool) -> list:
    """The programs MonoRunner builds for `model` on `sms` SMs: decode, then each verification width."""
    from sonic.mono.__main__ import load_config
    from sonic.mono.builder import build_program
    from sonic.mono.runner import default_tiling, verify_rows
    config = load_config(model)
    decode = build_program(config, default_tiling(config, sms), rows=1)
    widest = verify_rows(decode) if verify else 0
    return [decode] + [build_program(config, decode.tiling, rows=r) for r in range(2, widest + 1)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sonic.mono.prebuild", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="preset names, Hugging Face folders, config.json or .gguf files")
    p.add_argument("--sms", type=int, default=132, help="SMs of the GPU that will run them (132 on an H100 or H200)")
    p.add_argument("--no-verify", action="store_true", help="only the decode builds, not the verification builds")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="nvcc processes at once")
    args = p.parse_args(argv)
    try:
        from sonic.kernels.cuda.build import cache_dir, nvcc_path
        from sonic.mono.kernel import compile_program, unsupported
        if nvcc_path() is None:
            raise SonicError("nvcc was not found: install the CUDA toolkit (or set CUDA_HOME) to build the kernels")
        todo = [(m, prog) for m in args.models for prog in programs(m, args.sms, not args.no_verify)]
        for model, prog in todo:
            reason = unsupported(prog)
            if reason:
                raise SonicError(f"the monokernel cannot run {model}: {reason}")
    except SonicError as e:
        sys.stderr.write(f"sonic: error: {e}\n")
        return EXIT_USAGE
    print(f"building {len(todo)} monokernels into {cache_dir()} ({args.jobs} at once)", flush=True)
    start = time.perf_counter()

    def build(item):
        model, prog = item
        compile_program(prog)
        print(f"  {model}, {prog.rows} row{'s' if prog.rows > 1 else ''}: "
              f"done at {time.perf_counter() - start:.0f} s", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(build, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
