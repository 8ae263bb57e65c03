"""Generation speed: keishiki's backends against PyTorch eager and raw ``model.generate``.

For the tiny Llama (2 layers, hidden 64) and a larger one built here (12 layers, hidden 768,
12 heads, intermediate 3072, random weights), every measurement runs in its own Python
process: load the model, warm up, then time greedy generation of ``--gen-len`` tokens
(EOS ignored, so every run has the same length) after a ``--prompt-len`` prompt, and of one
token; decode tokens/s = (gen_len − 1) / (t(gen_len) − t(1)), the median over ``--repeat``
runs.  The same formula applies to every row, raw ``model.generate`` included
(``min_new_tokens`` = ``max_new_tokens`` so it does not stop at EOS).

A paired run also drives the same loaded model both ways in one process, alternating call
by call (the fairest check of "keishiki's torch loop is within 5% of ``model.generate``" on a
busy machine).

Rows: ``hf-generate`` (transformers' ``model.generate``, greedy, KV cache), keishiki
``torch`` (transformers forward + keishiki's loop and numpy sampler), ``onnxruntime``
(keishiki's ONNX export with KV cache, CPU provider), ``torchscript`` (traced with KV cache).

    python benchmarks/bench_runtimes.py                 # both models, ~5 minutes on 2 cores
    python benchmarks/bench_runtimes.py --models tiny --repeat 7 --json-out rows.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

MODELS = {
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128),
    "12L-768": dict(layers=12, hidden=768, heads=12, kv_heads=12, intermediate=3072),
}
ROWS = ["hf-generate", "torch", "onnxruntime", "torchscript"]


def build(root: Path, name: str) -> dict[str, Path]:
    """The HF folder and its ONNX / TorchScript (KV cache) exports, built once under root."""
    from keishiki._convert.onnx_export import export_causal_lm
    from keishiki._convert.torchscript_export import export_torchscript
    from keishiki.examples import build_tiny_llama

    hf, onnx_dir, ts_dir = root / name, root / f"{name}-onnx", root / f"{name}-ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (hf / "config.json").exists():
            build_tiny_llama(hf, max_positions=1024, **MODELS[name])
        if not (onnx_dir / "model.onnx").exists():
            export_causal_lm(hf, onnx_dir)
        if not (ts_dir / "model.pt").exists():
            export_torchscript(hf, ts_dir, method="trace-kv")
    return {"hf-generate": hf, "torch": hf, "onnxruntime": onnx_dir, "torchscript": ts_dir}


def worker(args: dict) -> dict:
    """Run in a fresh process: load, warm up, time ``gen_len`` and 1-token generations."""
    row, path, prompt_len, gen_len, repeat = (
        args["row"],
        args["path"],
        args["prompt_len"],
        args["gen_len"],
        args["repeat"],
    )
    prompt = [8 + (i * 104729) % 370 for i in range(prompt_len)]
    start = time.perf_counter()
    if row == "hf-generate":
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)

        def run(n: int) -> list[int]:
            with torch.inference_mode():
                out = model.generate(
                    ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
                )
            return out[0, prompt_len:].tolist()
    else:
        from keishiki import LLM, SamplingParams

        llm = LLM(model=path, backend=row)

        def run(n: int) -> list[int]:
            params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
            return llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0].token_ids

    load_s = time.perf_counter() - start
    run(4)
    full, one = [], []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        t = time.perf_counter()
        tokens = run(gen_len)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        run(1)
        one.append(time.perf_counter() - t)
    t_full, t_one = statistics.median(full), statistics.median(one)
    return {
        "row": row,
        "load_s": load_s,
        "first_token_s": t_one,
        "total_s": t_full,
        "decode_tok_s": (gen_len - 1) / (t_full - t_one),
        "tokens": tokens,
    }


def paired(path: str, prompt_len: int, gen_len: int, repeat: int) -> dict:
    """keishiki's torch loop and ``model.generate`` on the SAME loaded model in one process,
    alternating call by call, so machine load hits both alike; returns the median of the
    per-pair time ratios (generate / keishiki: above 1 means keishiki is faster)."""
    import torch

    from keishiki import LLM, SamplingParams

    llm = LLM(model=path, backend="torch")
    model = llm._engine.model  # the very module keishiki drives
    prompt = [8 + (i * 104729) % 370 for i in range(prompt_len)]
    ids = torch.tensor([prompt])
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)

    def ours() -> float:
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}], params)
        return time.perf_counter() - t

    def theirs() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=gen_len,
                min_new_tokens=gen_len,
                do_sample=False,
            )
        return time.perf_counter() - t

    ours(), theirs()  # warm-up
    ratios, ours_s, theirs_s = [], [], []
    for i in range(repeat * 3):
        a, b = (ours(), theirs()) if i % 2 else (theirs(), ours())[::-1]
        ours_s.append(a)
        theirs_s.append(b)
        ratios.append(b / a)
    return {
        "row": "paired",
        "generate_over_keishiki": statistics.median(ratios),
        "keishiki_s": statistics.median(ours_s),
        "generate_s": statistics.median(theirs_s),
    }


def measure(row: str, path: Path, prompt_len: int, gen_len: int, repeat: int) -> dict:
    spec = json.dumps(
        {
            "row": row,
            "path": str(path),
            "prompt_len": prompt_len,
            "gen_len": gen_len,
            "repeat": repeat,
        }
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", spec], capture_output=True, text=True
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"row": row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="tiny,12L-768")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="Keep the built models here.")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        if spec["row"] == "paired":
            print(
                json.dumps(
                    paired(spec["path"], spec["prompt_len"], spec["gen_len"], spec["repeat"])
                )
            )
        else:
            print(json.dumps(worker(spec)))
        return 0
    root = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-run-"))
    report = []
    for name in args.models.split(","):
        paths = build(root, name)
        rows = {
            row: measure(row, paths[row], args.prompt_len, args.gen_len, args.repeat)
            for row in ROWS
        }
        print(f"\n{name}: prompt {args.prompt_len}, generate {args.gen_len}, batch 1, greedy")
        print(f"{'row':<13}{'load s':>8}{'1st token ms':>14}{'decode tok/s':>14}  agrees")
        for row, r in rows.items():
            if "error" in r:
                print(f"{row:<13} error: {r['error']}")
                continue
            agrees = r["tokens"] == rows["hf-generate"].get("tokens")
            print(
                f"{row:<13}{r['load_s']:>8.2f}{r['first_token_s'] * 1000:>14.1f}"
                f"{r['decode_tok_s']:>14.1f}  {agrees}"
            )
        pair = measure("paired", paths["torch"], args.prompt_len, args.gen_len, args.repeat)
        print(
            f"paired in one process: model.generate {pair.get('generate_s', 0) * 1000:.1f} ms"
            f", keishiki torch {pair.get('keishiki_s', 0) * 1000:.1f} ms per request"
        )
        speed = {row: r.get("decode_tok_s") for row, r in rows.items()}
        total = {row: r.get("total_s") for row, r in rows.items()}
        ratios = {
            "onnxruntime / torch eager decode tok/s": speed["onnxruntime"] / speed["hf-generate"],
            "onnxruntime / keishiki torch decode tok/s": speed["onnxruntime"] / speed["torch"],
            "keishiki torch / model.generate decode tok/s": speed["torch"] / speed["hf-generate"],
            "model.generate / keishiki torch total time": total["hf-generate"] / total["torch"],
            "torchscript / keishiki torch decode tok/s": speed["torchscript"] / speed["torch"],
            "paired: model.generate time / keishiki torch time": pair.get(
                "generate_over_keishiki", float("nan")
            ),
        }
        for label, value in ratios.items():
            print(f"  {label}: {value:.2f}x")
        report.append({"model": name, "rows": rows, "paired": pair, "ratios": ratios})
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
