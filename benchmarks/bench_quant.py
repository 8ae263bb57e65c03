"""Quantization: file size, time and peak memory per type, quality, and ONNX int8/int4 speed.

Builds two random-weight Llamas (``keishiki.examples.build_tiny_llama``): the tiny one the
tests use (2 layers, hidden 256) and a 12-layer hidden-768 one (12 heads, 4 KV heads, ffn
2048; 76 M parameters, 305 MB float32), then:

* GGUF, per ``--quant`` type: ``keishiki.convert(hf, out.gguf, to="gguf", quant=T,
  verify=False)`` in a fresh process: seconds, peak RSS (VmHWM), file size; the anchor is
  gguf-py's own q8_0 path (``gguf.quants.quantize(..., Q8_0)`` + ``GGUFWriter``, what
  ``convert_hf_to_gguf.py --outtype q8_0`` runs; llama.cpp's C converter is not installed
  here), so every row also reads as a ratio to it;
* the quality of each file (:func:`keishiki._convert.quant_verify.gguf_quality`: logits max
  and mean abs error, mean KL divergence, greedy agreement on the fixed prompts);
* ONNX: the 12-layer model exported (fp32), quantized to int8 and int4 (block 32), each run
  by keishiki's onnxruntime backend: decode tokens/s = (n - 1) / (t(n) - t(1)), median of 3.

    python benchmarks/bench_quant.py [--out DIR] [--keep] [--types q8_0,q4_K_M] [--json-out f]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TYPES = (
    "f16",
    "q8_0",
    "q6_K",
    "q5_K_M",
    "q5_0",
    "q5_1",
    "q4_K_M",
    "q4_K_S",
    "q4_0",
    "q4_1",
    "q3_K_M",
    "q2_K",
)

WRAP = r"""
import time, sys
t0 = time.perf_counter()
exec(compile(open(sys.argv[1]).read(), "snippet", "exec"))
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("RESULT", dt, int(hwm) * 1024)
"""

KEISHIKI = r"""
import keishiki
keishiki.convert(SRC, OUT, to="gguf", quant=QUANT, verify=False, quiet=True, force=True)
"""

# gguf-py alone, as convert_hf_to_gguf.py uses it for --outtype q8_0 (names kept: the
# quantization and writing are what is timed)
GGUF_PY_Q8 = r"""
import numpy as np, gguf
from safetensors.numpy import load_file
sd = load_file(SRC + "/model.safetensors")
w = gguf.GGUFWriter(OUT, "llama")
for name, arr in sd.items():
    arr = arr.astype(np.float32)
    if arr.ndim >= 2 and arr.shape[-1] % 32 == 0:
        w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, arr)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"""


def run_snippet(code: str, work: Path, **values) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of ``code`` (with NAME=value lines first) in a fresh process."""
    snippet = work / "snippet.py"
    snippet.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()) + code)
    proc = subprocess.run(
        [sys.executable, "-c", WRAP, str(snippet)], capture_output=True, text=True, check=True
    )
    _, seconds, rss = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1].split()
    return float(seconds), int(rss)


def gguf_rows(name: str, hf: Path, work: Path, types: list[str]) -> list[dict]:
    from keishiki._convert.quant_verify import gguf_quality

    rows = []
    anchor = work / f"{name}-gguf-py-q8_0.gguf"
    seconds, rss = run_snippet(GGUF_PY_Q8, work, SRC=str(hf), OUT=str(anchor))
    rows.append(
        {
            "model": name,
            "type": "gguf-py q8_0 (anchor)",
            "seconds": seconds,
            "peak_rss": rss,
            "bytes": anchor.stat().st_size,
        }
    )
    base = seconds
    for quant in types:
        out = work / f"{name}-{quant}.gguf"
        seconds, rss = run_snippet(KEISHIKI, work, SRC=str(hf), OUT=str(out), QUANT=quant)
        row = {
            "model": name,
            "type": quant,
            "seconds": seconds,
            "vs_anchor": seconds / base,
            "peak_rss": rss,
            "bytes": out.stat().st_size,
        }
        if quant != "f16":
            q = gguf_quality(hf, out, quant)
            row.update(
                {
                    k: q[k]
                    for k in (
                        "max_abs_diff",
                        "mean_abs_diff",
                        "kl_mean",
                        "top1_agreement",
                        "top1_agreement_confident",
                        "n_confident",
                        "passed",
                    )
                }
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


DECODE = r"""
import statistics, time, json, sys
from keishiki import LLM, SamplingParams
llm = LLM(model=PATH, backend="onnxruntime")
prompt = [8 + (i * 104729) % 370 for i in range(16)]
def run(n):
    p = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": prompt}], p)[0].outputs[0].token_ids
run(4)
full, one = [], []
for _ in range(3):
    t = time.perf_counter(); run(GEN); full.append(time.perf_counter() - t)
    t = time.perf_counter(); run(1); one.append(time.perf_counter() - t)
print("DECODE", (GEN - 1) / (statistics.median(full) - statistics.median(one)))
"""


def decode_tok_s(path: Path, gen: int = 64) -> float:
    code = "".join(f"{k} = {v!r}\n" for k, v in {"PATH": str(path), "GEN": gen}.items()) + DECODE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float([l for l in proc.stdout.splitlines() if l.startswith("DECODE")][-1].split()[1])


def onnx_rows(hf: Path, work: Path) -> list[dict]:
    import keishiki

    fp32 = work / "onnx-fp32"
    keishiki.convert(hf, fp32, to="onnx", quiet=True, verify=False, force=True)
    rows = [{"type": "onnx fp32", "bytes": _bytes(fp32), "decode_tok_s": decode_tok_s(fp32)}]
    for quant in ("int8", "int4"):
        out = work / f"onnx-{quant}"
        start = time.perf_counter()
        report = keishiki.convert(fp32, out, to="onnx", quant=quant, quiet=True, force=True)
        step = report.steps[-1]
        rows.append(
            {
                "type": f"onnx {quant}",
                "bytes": _bytes(out),
                "seconds": time.perf_counter() - start,
                "decode_tok_s": decode_tok_s(out),
                "kl_mean": step.verify.get("kl_mean"),
                "top1_agreement": step.verify.get("top1_agreement"),
                "max_abs_diff": step.verify.get("max_abs_diff"),
            }
        )
        rows[-1]["decode_vs_fp32"] = rows[-1]["decode_tok_s"] / rows[0]["decode_tok_s"]
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    from keishiki.examples import build_tiny_llama

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-quant-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        models = {
            "tiny (2 x 256)": build_tiny_llama(work / "tiny", hidden=256, intermediate=512),
            "12 x 768": build_tiny_llama(
                work / "l12", layers=12, hidden=768, intermediate=2048, heads=12, kv_heads=4
            ),
        }
        types = args.types.split(",")
        rows = {
            "gguf": [r for name, hf in models.items() for r in gguf_rows(name, hf, work, types)]
        }
        if not args.no_onnx:
            rows["onnx"] = onnx_rows(models["12 x 768"], work)
        rows["machine"] = {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "date": time.strftime("%Y-%m-%d"),
        }
        if args.json_out:
            args.json_out.write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(work, ignore_errors=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
