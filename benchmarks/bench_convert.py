"""``keishiki convert`` against what people do, and verified against unverified (issue 12).

``--edges bin`` (the first table of benchmarks/README.md's convert section): a Llama-shaped
``pytorch_model.bin`` of ~2 GB (8 layers, hidden 2048, vocab 32000, float32, written with
``torch.save``) converted to safetensors, against safetensors' own way (``torch.load`` +
``save_file``), ``from_pretrained`` + ``save_pretrained`` and ``cp``.  Needs ~10 GB of disk.

The issue-12 edges (default): verified and ``verify=False`` conversions of

* ``pt``: a ``torch.save`` zip of 256 float32 tensors of 1024x512 (512 MiB) -> safetensors,
  against ``torch.load(mmap=True)`` + ``safetensors.torch.save_file``;
* ``gguf``: an HF Llama folder (12 layers, hidden 768, 12 heads, ffn 3072, float32
  safetensors, Llama-2's real 32000-piece SentencePiece vocabulary from the test corpus's
  ``ggml-vocab-llama-spm.gguf``: 162 M parameters, 650 MB) -> GGUF f16, against llama.cpp's
  ``convert_hf_to_gguf.py --outtype f16`` (``--llama-cpp DIR``: a llama.cpp checkout, its
  ``gguf-py`` beside the script as the script expects) and against gguf-py's
  ``GGUFWriter`` writing the same f16 tensors with no vocabulary (the floor of the writes);
* ``onnx`` / ``torchscript``: the same HF folder -> ONNX with KV cache / traced TorchScript.

Each measurement runs in a fresh Python process: the time of the operation including its
imports (not the interpreter's start) and the peak RSS (VmHWM) of that process (a child
process it starts, such as the tokenizer check's, is not in its VmHWM).  Runs alternate
between the rows, ``--repeat`` rounds; the table shows the best (least disturbed) and the
median.  Page cache warm (the sources were just written).

    python benchmarks/bench_convert.py [--edges pt,gguf,onnx,torchscript] [--llama-cpp DIR]
        [--out DIR] [--keep] [--repeat 3] [--json-out rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "dtype": "float32",
}

BUILD = r"""
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
folder = sys.argv[1]
config = LlamaConfig(**json.loads(open(folder + "/config.json").read()))
with torch.device("meta"):
    model = LlamaForCausalLM(config)
g = torch.Generator().manual_seed(0)
sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in model.state_dict().items()}
torch.save(sd, folder + "/pytorch_model.bin")
"""

RUNS = {
    "keishiki convert (verified)": r"""
import sys, keishiki
keishiki.convert(sys.argv[1] + "/pytorch_model.bin", sys.argv[2] + "/model.safetensors",
                 to="safetensors", quiet=True)
""",
    "keishiki convert (--no-verify)": r"""
import sys, keishiki
keishiki.convert(sys.argv[1] + "/pytorch_model.bin", sys.argv[2] + "/model.safetensors",
                 to="safetensors", quiet=True, verify=False)
""",
    "(a) torch.load + save_file": r"""
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1] + "/pytorch_model.bin", weights_only=True, mmap=True)
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2] + "/model.safetensors",
          metadata={"format": "pt"})
""",
    "(b) from_pretrained + save_pretrained": r"""
import sys
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
""",
}

# wrapper: run the snippet, then print the elapsed time and VmHWM of this very process
WRAP = r"""
import time, sys
t0 = time.perf_counter()
exec(compile(open(sys.argv[3]).read(), "snippet", "exec"))
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("RESULT", dt, int(hwm) * 1024)
"""


def run_snippet(code: str, src: Path, out: Path, work: Path) -> tuple[float, int]:
    """(seconds of the operation, peak RSS bytes) of ``code`` in a fresh interpreter."""
    snippet = work / "snippet.py"
    snippet.write_text(code)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WRAP, str(src), str(out), str(snippet)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{code}\nfailed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    _, seconds, rss = line.split()
    return float(seconds), int(rss)


def run_cp(src: Path, out: Path) -> tuple[float, int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.execvp("cp", ["cp", str(src / "pytorch_model.bin"), str(out / "copy.bin")])
    _, status, usage = os.wait4(pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def run_cp_fsync(src: Path, out: Path) -> tuple[float, int]:
    """cp, then fsync the copy: what an atomic writer (fsync before rename) has to pay too."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.execvp(
            "sh",
            [
                "sh",
                "-c",
                f"cp '{src / 'pytorch_model.bin'}' '{out / 'copy.bin'}' "
                f"&& sync -d '{out / 'copy.bin'}'",
            ],
        )
    _, status, usage = os.wait4(pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def largest_tensor_bytes(src: Path) -> int:
    import keishiki

    return max(t.nbytes for t in keishiki.inspect(src / "pytorch_model.bin").tensors)


# ---- issue 12: verified against unverified, per edge ---------------------------------------

BUILD_PT = r"""
import sys, torch
g = torch.Generator().manual_seed(0)
torch.save({f"layer{i}.weight": torch.randn(1024, 512, generator=g) for i in range(256)},
           sys.argv[1])
"""

BUILD_HF = r"""
import sys, gguf, torch, transformers
from pathlib import Path
from keishiki._convert.gguf_edges import read_kv
from keishiki._convert.gguf_vocab import write_hf_tokenizer
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
vocab = Path(sys.argv[2])
write_hf_tokenizer(out, read_kv(gguf.GGUFReader(str(vocab))), vocab)
torch.manual_seed(0)
config = transformers.LlamaConfig(
    vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
model = transformers.LlamaForCausalLM(config).eval()
with torch.no_grad():  # distinct norms (exporters merge identical tensors)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.add_(torch.randn_like(param) * 0.02)
transformers.utils.logging.disable_progress_bar()
model.save_pretrained(out)
"""

CONVERT = r"""
import sys, keishiki
keishiki.convert(sys.argv[1] + SRC, sys.argv[2] + OUT, to=TO, quiet=True, verify=VERIFY, **EXTRA)
"""

PT_ANCHOR = r"""
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1] + "/model.pt", weights_only=True, mmap=True)
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2] + "/model.safetensors",
          metadata={"format": "pt"})
"""

LLAMA_CPP = r"""
import logging, os, runpy, sys
sys.argv = [SCRIPT, sys.argv[1] + "/hf", "--outtype", "f16", "--outfile",
            sys.argv[2] + "/model.gguf"]
sys.path.insert(0, os.path.dirname(SCRIPT))  # its conversion/ package (gguf-py it adds itself)
logging.disable(logging.INFO)
try:
    runpy.run_path(SCRIPT, run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
"""

# the floor of the writes: the same f16 tensors, names kept, no vocabulary, no checks
GGUF_PY_F16 = r"""
import sys, numpy as np, gguf
from safetensors import safe_open
w = gguf.GGUFWriter(sys.argv[2] + "/model.gguf", "llama")
with safe_open(sys.argv[1] + "/hf/model.safetensors", framework="np") as fh:
    names = list(fh.keys())
    for name in names:
        arr = fh.get_tensor(name)
        w.add_tensor_info(name, arr.shape, np.dtype(np.float16 if arr.ndim > 1 else np.float32),
                          arr.size * (2 if arr.ndim > 1 else 4))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
    for name in names:
        arr = fh.get_tensor(name)
        w.write_tensor_data(arr.astype(np.float16) if arr.ndim > 1 else arr)
w.close()
"""


def _convert(src: str, out: str, to: str, verify: bool, **extra) -> str:
    values = f"SRC = {src!r}\nOUT = {out!r}\nTO = {to!r}\nVERIFY = {verify}\nEXTRA = {extra!r}\n"
    return values + CONVERT


def edge_rows(llama_cpp: Path | None) -> dict[str, list[tuple[str, str]]]:
    """{edge: [(row name, snippet)]}: verified, unverified, then the anchors."""
    rows = {
        "pt": [
            ("verified", _convert("/model.pt", "/model.safetensors", "safetensors", True)),
            ("--no-verify", _convert("/model.pt", "/model.safetensors", "safetensors", False)),
            ("torch.load(mmap) + save_file", PT_ANCHOR),
        ],
        "gguf": [
            ("verified", _convert("/hf", "/model.gguf", "gguf", True, quant="f16")),
            ("--no-verify", _convert("/hf", "/model.gguf", "gguf", False, quant="f16")),
            ("gguf-py GGUFWriter, f16 tensors only", GGUF_PY_F16),
        ],
        "onnx": [
            ("verified", _convert("/hf", "/onnx", "onnx", True)),
            ("--no-verify", _convert("/hf", "/onnx", "onnx", False)),
        ],
        "torchscript": [
            ("verified", _convert("/hf", "/ts", "torchscript", True)),
            ("--no-verify", _convert("/hf", "/ts", "torchscript", False)),
        ],
    }
    if llama_cpp is not None:
        script = str(llama_cpp / "convert_hf_to_gguf.py")
        rows["gguf"].append(
            ("llama.cpp convert_hf_to_gguf.py", f"SCRIPT = {script!r}\n" + LLAMA_CPP)
        )
    return rows


def build_sources(src: Path) -> None:
    """The issue-12 sources under ``src``: ``model.pt`` and the HF folder ``hf``."""
    if not (src / "model.pt").exists():
        subprocess.run([sys.executable, "-c", BUILD_PT, str(src / "model.pt")], check=True)
    if not (src / "hf" / "model.safetensors").exists():
        corpus = Path(__file__).resolve().parents[1] / "tests/corpus/gguf/llama.cpp-vocab"
        vocab = corpus / "ggml-vocab-llama-spm.gguf"
        subprocess.run([sys.executable, "-c", BUILD_HF, str(src / "hf"), str(vocab)], check=True)


def issue12(args: argparse.Namespace, work: Path) -> list[dict]:
    src = work / "src"
    src.mkdir(exist_ok=True)
    build_sources(src)
    table = edge_rows(args.llama_cpp)
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for _ in range(args.repeat):  # rounds alternate between the rows
        for edge in args.edges:
            for name, code in table[edge]:
                results.setdefault((edge, name), []).append(
                    run_snippet(code, src, work / "out", work)
                )
    rows = []
    for (edge, name), runs in results.items():
        times = [r[0] for r in runs]
        rows.append(
            {
                "edge": edge,
                "what": name,
                "best": min(times),
                "median": statistics.median(times),
                "peak_rss": max(r[1] for r in runs),
            }
        )
    print(
        f"\n{platform.node()} python {platform.python_version()}, {args.repeat} rounds, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| edge | what | best | median | vs unverified (best) | peak RSS |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        base = next(x for x in rows if x["edge"] == r["edge"] and x["what"] == "--no-verify")
        print(
            f"| {r['edge']} | {r['what']} | {r['best']:.2f} s | {r['median']:.2f} s | "
            f"{r['best'] / base['best']:.2f}x | {r['peak_rss'] / 2**20:.0f} MiB |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--edges",
        default="pt,gguf,onnx,torchscript",
        help="comma-separated: bin (the 2 GB .bin table), pt, gguf, onnx, torchscript",
    )
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp checkout (its converter)")
    args = parser.parse_args()
    args.edges = [e for e in args.edges.split(",") if e]
    work = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out: dict = {}
        if "bin" in args.edges:
            out["bin"] = bin_table(args, work)
            args.edges.remove("bin")
        if args.edges:
            out["issue12"] = issue12(args, work)
        if args.json_out:
            args.json_out.write_text(json.dumps(out, indent=2))
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(work, ignore_errors=True)


def bin_table(args: argparse.Namespace, work: Path) -> dict:
    """The ~2 GB ``pytorch_model.bin`` -> safetensors table against cp and the usual ways."""
    src = work / "hf-bin"
    if not (src / "pytorch_model.bin").exists():
        src.mkdir(exist_ok=True)
        (src / "config.json").write_text(json.dumps(CONFIG))
        subprocess.run([sys.executable, "-c", BUILD, str(src)], check=True)
    size = (src / "pytorch_model.bin").stat().st_size
    largest = largest_tensor_bytes(src)
    print(f"source: {size / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB")
    rows = []
    cp_times, cp_rss = zip(*[run_cp(src, work / "out") for _ in range(args.repeat)])
    cp_time = statistics.median(cp_times)
    rows.append({"what": "cp", "seconds": cp_time, "peak_rss": max(cp_rss)})
    sync_times, sync_rss = zip(*[run_cp_fsync(src, work / "out") for _ in range(args.repeat)])
    rows.append(
        {"what": "cp + fsync", "seconds": statistics.median(sync_times), "peak_rss": max(sync_rss)}
    )
    for name, code in RUNS.items():
        results = [run_snippet(code, src, work / "out", work) for _ in range(args.repeat)]
        rows.append(
            {
                "what": name,
                "seconds": statistics.median(r[0] for r in results),
                "peak_rss": max(r[1] for r in results),
            }
        )
    print(f"\n{platform.node()} python {platform.python_version()}, repeat {args.repeat}\n")
    print("| what | time | speed vs cp | peak RSS | RSS - largest tensor |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['what']} | {r['seconds']:.2f} s | {cp_time / r['seconds']:.2f}x | "
            f"{r['peak_rss'] / 2**20:.0f} MiB | {(r['peak_rss'] - largest) / 2**20:.0f} MiB |"
        )
    return {"size": size, "largest": largest, "rows": rows}


if __name__ == "__main__":
    main()
