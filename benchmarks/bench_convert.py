"""``keishiki convert`` of a ~2 GB ``pytorch_model.bin`` to safetensors, against what people do.

Builds a Llama-shaped HF folder (config.json + ``pytorch_model.bin`` written with
``torch.save``, about 2.1 GB of float32: 8 layers, hidden 2048, vocab 32000, largest tensor
the 262 MB embedding), then, each in a fresh Python process, times and measures the peak
RSS (VmHWM) of:

* ``keishiki.convert(bin, out.safetensors, to="safetensors")`` (read-back verification on),
  and the same with ``verify=False``;
* (a) safetensors' own approach: ``torch.load`` everything, ``safetensors.torch.save_file``
  (``weights_only=True, mmap=True``, its best case);
* (b) ``AutoModelForCausalLM.from_pretrained`` + ``save_pretrained`` (safetensors);
* ``cp`` of the same bytes (the speed of the disk and page cache: the ceiling).

Page cache is warm (the file was just written) for everyone; each measurement is repeated
``--repeat`` times and the median time reported.  Needs ~10 GB of free disk.

    python benchmarks/bench_convert.py [--out DIR] [--keep] [--repeat 3] [--json-out rows.json]
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
        check=True,
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "hf-bin"
    try:
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
            {
                "what": "cp + fsync",
                "seconds": statistics.median(sync_times),
                "peak_rss": max(sync_rss),
            }
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
        if args.json_out:
            args.json_out.write_text(
                json.dumps({"size": size, "largest": largest, "rows": rows}, indent=2)
            )
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
