"""`--tp 2` end to end: an engine whose rank 0 is this process and whose rank 1 it spawns itself."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from processes import children, running
from sonic.cli import main
from sonic.engine.generate import Engine
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError

TIMEOUT_S = 3.0  # short, so the stalled-peer test is quick; a tiny model's step takes milliseconds


@pytest.fixture(scope="module")
def single(tiny_chat_model_dir):
    return Engine.load(str(tiny_chat_model_dir))


@pytest.fixture(scope="module")
def tp_engine(tiny_chat_model_dir):
    engine = Engine.load(str(tiny_chat_model_dir), tp=2, tp_timeout_s=TIMEOUT_S)
    yield engine
    engine.close()
    assert not any(w.is_alive() for w in engine.runner.workers)


def prompts(engine):
    tok = engine.text_tokenizer()
    return [tok.encode("Hello there"), tok.encode_chat([{"role": "user", "content": "What is 2 + 2?"}])]


def test_greedy_tokens_equal_single_process(tp_engine, single):
    for ids in prompts(single):
        assert list(tp_engine.generate_ids(ids, 24, SamplingParams())) == \
            list(single.generate_ids(ids, 24, SamplingParams()))


def test_stopping_early_keeps_the_ranks_in_step(tp_engine, single):
    ids = prompts(single)[0]
    tokens = tp_engine.generate_ids(ids, 24, SamplingParams())
    first = [next(tokens) for _ in range(3)]
    tokens.close()  # rank 0 stops; rank 1 hears it before the next step
    full = list(single.generate_ids(ids, 24, SamplingParams()))
    assert first == full[:3]
    assert list(tp_engine.generate_ids(ids, 24, SamplingParams())) == full


def test_stop_string_streams_the_same_text(tp_engine, single):
    ids = prompts(single)[1]
    text = "".join(single.stream(ids, 24))
    stop = text[5:8]
    assert "".join(tp_engine.stream(ids, 24, stop=[stop])) == text[:text.index(stop)]


def test_sampling_is_seeded_and_valid(tp_engine, single):
    ids = prompts(single)[0]
    for params in (SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=0.8, top_k=20, seed=7),
                   SamplingParams(temperature=1.0, top_p=0.9, seed=7)):
        a = list(tp_engine.generate_ids(ids, 16, params))
        assert a == list(tp_engine.generate_ids(ids, 16, params))
        assert all(0 <= t < single.config.vocab_size for t in a)
    unseeded = [list(tp_engine.generate_ids(ids, 16, SamplingParams(temperature=1.0))) for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_silent_peer_is_one_clear_error(tp_engine, single):
    """The last test on the shared engine, which it stops: a stalled rank 1 ends the request on rank 0."""
    worker = tp_engine.runner.workers[0]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(SonicError, match=f"rank 1 did not answer within {TIMEOUT_S:g} s"):
            list(tp_engine.generate_ids(prompts(single)[0], 8, SamplingParams()))
        assert time.monotonic() - start < TIMEOUT_S + 10
    finally:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGCONT)
    worker.join(timeout=5)
    assert not worker.is_alive()
    with pytest.raises(SonicError, match="start sonic again"):
        list(tp_engine.generate_ids(prompts(single)[0], 8, SamplingParams()))


def test_silent_rank0_is_reported_by_the_worker(tiny_chat_model_dir):
    """A worker whose rank 0 stops talking mid-request gives up after the timeout and exits; rank 0's
    next request names the worker's error instead of hanging. (Runs after the shared engine stopped.)"""
    engine = Engine.load(str(tiny_chat_model_dir), tp=2, tp_timeout_s=TIMEOUT_S)
    try:
        worker = engine.runner.workers[0]
        engine.runner.commands[0].send(("generate", [1, 2, 3], 4, SamplingParams()))  # rank 0 never joins in
        start = time.monotonic()
        worker.join(timeout=TIMEOUT_S + 20)
        assert worker.exitcode == 0 and time.monotonic() - start < TIMEOUT_S + 20
        with pytest.raises(SonicError) as e:
            list(engine.generate_ids([1, 2, 3], 4, SamplingParams()))
        assert str(e.value).startswith("tensor parallelism stopped: rank 1: "), str(e.value)
        assert "timed out" in str(e.value).lower(), str(e.value)
    finally:
        engine.close()


def test_cli_tp2_prints_what_tp1_prints(tiny_chat_model_dir, capsys):
    args = ["generate", "Once upon a time", "--model", str(tiny_chat_model_dir), "--max-tokens", "12", "--raw"]
    assert main(args) == 0
    expected = capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "sonic", *args, "--tp", "2"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected and expected.strip()
    assert "tok/s" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_stops_rank0_and_its_workers(tiny_chat_model_dir):
    argv = ["generate", "Once", "--model", str(tiny_chat_model_dir), "--max-tokens", "480", "--raw", "--tp", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "sonic", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                            start_new_session=True,  # its own process group, as a terminal's job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.read(20)  # streaming: both ranks are mid-request
        workers = children(proc.pid)
        assert workers
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: to every process of the group
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "leaked" not in err, err
    deadline = time.monotonic() + 10
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(p) for p in workers)


def assert_user_error(capsys, argv, *words):
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sonic: error:"), lines
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--tp", "3"], ["--tp 3", "4 attention heads do not divide by 3", "use one of --tp 1, 2, 4"]),
    (["--tp", "0"], ["invalid --tp 0"]),
    (["--tp", "2", "--speculative", "ngram"], ["--speculative is not supported yet with --tp"]),
    (["--tp", "2", "--runner", "graph"], ["--runner graph with --tp runs on GPUs", "--device cuda"]),
    (["--tp", "2", "--runner", "mono"], ["--runner mono is not supported with --tp", "use ref"]),
    (["--tp", "2", "--tp-allreduce", "one-shot"], ["--tp-allreduce one-shot runs on GPUs", "--device cuda"]),
])
def test_bad_tp_flags(tiny_chat_model_dir, capsys, flags, words):
    assert_user_error(capsys, ["generate", "hi", "--model", str(tiny_chat_model_dir), *flags], *words)


def test_more_ranks_than_gpus(tiny_chat_model_dir, monkeypatch):
    from sonic.dist.launch import check_tp_request
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SonicError, match="--tp 4 needs 4 GPUs but 2 are visible"):
        check_tp_request(str(tiny_chat_model_dir), 4, "cuda")
