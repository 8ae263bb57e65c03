"""``keishiki bench``: load time, time to first token, decode speed and peak memory of each
backend on the same greedy request, and whether their tokens agree.

Each backend is measured in its own Python process (``python -m keishiki.runtimes.bench``), so
load time and peak memory are its own and one backend's warm caches do not help another.  A
Hugging Face folder is converted to ONNX and TorchScript (with KV cache) into a cache folder
first, once per model version.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..core.children import python_module
from ..errors import InvalidRequest, KeishikiError, PathNotFound

DEFAULT_BACKENDS = {
    "hf-model": ["torch", "onnxruntime", "torchscript"],
    "onnx": ["onnxruntime"],
    "torchscript": ["torchscript"],
    "gguf": ["torch"],
}


def cache_root() -> Path:
    """Where exports for benchmarking go: ``$KEISHIKI_CACHE/bench`` (default
    ``~/.cache/keishiki/bench``), read at call time."""
    return Path(os.environ.get("KEISHIKI_CACHE", Path.home() / ".cache" / "keishiki")) / "bench"


def prompt_ids(vocab: int, length: int, batch: int, skip: int = 8) -> list[list[int]]:
    """``batch`` fixed pseudo-random prompts of ``length`` tokens (ids above the first
    ``skip``, where special tokens usually live), the same on every run."""
    rows = []
    for row in range(batch):
        rows.append([skip + (row * 7919 + i * 104729) % (vocab - skip) for i in range(length)])
    return rows


def measure(
    model: str,
    backend: str,
    tokenizer: str | None,
    prompt_len: int,
    gen_len: int,
    batch: int,
    repeats: int = 3,
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Load ``model`` on ``backend`` and time greedy generation of ``gen_len`` tokens for
    ``batch`` prompts of ``prompt_len`` tokens (EOS ignored, so every run has the same length).

    Returns:
        ``load_s``, ``ttft_s`` (median), ``decode_tok_s`` (median, batch × (gen_len−1) tokens
        over the decode time), ``peak_rss``, ``token_ids`` of the last run, ``backend_reason``.
    """
    from . import LLM, SamplingParams

    start = time.perf_counter()
    kwargs = {"threads": threads} if threads and backend == "onnxruntime" else {}
    llm = LLM(
        model=model,
        backend=backend,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    load_s = time.perf_counter() - start
    vocab = llm._engine.vocab_size or llm.tokenizer.vocab_size
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids(vocab, prompt_len, batch)]
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate(prompts, params.clone(max_tokens=min(gen_len, 4)))  # warm-up
    ttfts, speeds = [], []
    for _ in range(repeats):
        outs = llm.generate(prompts, params)
        ttfts.append(outs[0].metrics["first_token_s"])
        decode = max(o.metrics.get("decode_s", 0.0) for o in outs)
        speeds.append(batch * (gen_len - 1) / decode if decode > 0 else float("nan"))
    return {
        "backend": backend,
        "load_s": load_s,
        "ttft_s": _median(ttfts),
        "decode_tok_s": _median(speeds),
        "peak_rss": _peak_rss(),
        "token_ids": [o.outputs[0].token_ids for o in outs],
        "backend_reason": llm.backend_reason,
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _peak_rss() -> int | None:
    """This process's own peak resident memory in bytes.

    Linux's ``ru_maxrss`` of a spawned child starts at its parent's peak (the fork copied
    it), so a worker reported the CLI's 394 MiB where it used 77: ``VmHWM`` in
    ``/proc/self/status`` is the process's own high-water mark.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def converted(model_dir: Path, backend: str, cache_dir: Path | None = None) -> Path:
    """The ONNX or TorchScript (KV cache) export of ``model_dir`` for ``backend``, made once
    into the cache (keyed by the folder's path and its files' sizes and times)."""
    stamp = hashlib.sha256(str(model_dir.resolve()).encode())
    for file in sorted(model_dir.iterdir()):
        info = file.stat()
        stamp.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    target = (cache_dir or cache_root()) / f"{model_dir.name}-{stamp.hexdigest()[:12]}" / backend
    if (target / ".done").exists():
        return target
    if backend == "onnxruntime":
        from .._convert.onnx_export import export_causal_lm

        export_causal_lm(model_dir, target)
    else:
        from .._convert.torchscript_export import export_torchscript

        export_torchscript(model_dir, target, method="trace-kv")
    (target / ".done").write_text("ok")
    return target


def bench(
    model: str | Path,
    backends: list[str] | None = None,
    prompt_len: int = 32,
    gen_len: int = 32,
    batch: int = 1,
    tokenizer: str | None = None,
    repeats: int = 3,
    cache_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Measure each backend on ``model`` (see :func:`measure`), each in its own process.

    The model passes the load gate first (:func:`keishiki.core.gate.admit`): a HF folder is
    exported with transformers before any worker starts, so the gate cannot wait for them.

    Returns:
        ``{"model", "format", "settings", "results": [...], "agreement": {...}}`` where each
        result has the figures of :func:`measure` (or ``error``) and agreement compares every
        backend's greedy tokens with the first one's.

    Raises:
        PathNotFound: no such model path.
        InvalidRequest: bad sizes, an unknown backend, a model that cannot generate.
        UnsafeFile: the model scans dangerous or unknown, without ``trust_remote_code``.
    """
    from ..core.gate import admit
    from .select import BACKENDS, choose, detect_format

    model = Path(model)
    if not model.exists():
        raise PathNotFound(model)
    for name, value in (
        ("prompt-len", prompt_len),
        ("gen-len", gen_len),
        ("batch", batch),
        ("repeats", repeats),
    ):
        if value < 1:
            raise InvalidRequest(f"--{name} must be at least 1, got {value}")
    fmt = detect_format(model)
    if fmt not in DEFAULT_BACKENDS:
        raise InvalidRequest(f"{model}: a {fmt} file cannot generate text")
    admit(model, trust=trust_remote_code, purpose="benchmark")
    choose(model).check_sizes()
    backends = backends or DEFAULT_BACKENDS[fmt]
    for name in backends:
        if name not in BACKENDS or name == "auto":
            raise InvalidRequest(
                f"unknown backend {name!r}: choose from torch, onnxruntime, torchscript, vllm"
            )
    results = []
    for name in backends:
        target, tok = str(model), tokenizer
        if fmt == "hf-model" and name in ("onnxruntime", "torchscript"):
            target, tok = str(converted(model, name, cache_dir)), tokenizer or str(model)
        results.append(
            _in_subprocess(
                dict(
                    model=target,
                    backend=name,
                    tokenizer=tok,
                    prompt_len=prompt_len,
                    gen_len=gen_len,
                    batch=batch,
                    repeats=repeats,
                    trust_remote_code=trust_remote_code,
                )
            )
        )
    if all(r.get("refused") for r in results):  # nothing ran: one line, exit 2, as `run`
        raise InvalidRequest(results[0]["error"])
    return {
        "model": str(model),
        "format": fmt,
        "settings": {
            "prompt_len": prompt_len,
            "gen_len": gen_len,
            "batch": batch,
            "repeats": repeats,
            "sampling": "greedy, EOS ignored",
        },
        "results": results,
        "agreement": agreement(results),
    }


def _in_subprocess(args: dict) -> dict:
    proc = subprocess.run(
        python_module("keishiki.runtimes.bench", json.dumps(args)),
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": args["backend"], "error": tail[:300]}


def agreement(results: list[dict]) -> dict:
    """For each backend after the first that ran: share of sequences whose greedy tokens equal
    the first backend's, and the first position where any differ (None if all agree)."""
    ran = [r for r in results if "token_ids" in r]
    if len(ran) < 2:
        return {}
    reference = ran[0]
    report = {"reference": reference["backend"]}
    for other in ran[1:]:
        pairs = list(zip(reference["token_ids"], other["token_ids"]))
        same = sum(a == b for a, b in pairs)
        first = min(
            (next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) for a, b in pairs if a != b),
            default=None,
        )
        report[other["backend"]] = {
            "identical": same,
            "of": len(pairs),
            "first_difference_at": first,
        }
    return report


def _worker(argv: list[str]) -> int:
    args = json.loads(argv[0])
    try:
        result = measure(**args)
    except KeishikiError as exc:  # the model or request is at fault: said as keishiki says it
        print(
            json.dumps(
                {"backend": args.get("backend"), "error": str(exc).splitlines()[0], "refused": True}
            )
        )
        return 0
    except Exception as exc:  # reported as the row's error, the other backends still run
        print(
            json.dumps(
                {
                    "backend": args.get("backend"),
                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                }
            )
        )
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
