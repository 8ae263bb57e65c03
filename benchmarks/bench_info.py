"""How long ``keishiki info`` takes on a ~2 GB checkpoint, against what people use today.

Builds the same weights (by default 24 float32 tensors of 4096x5120, 1.9 GiB) as
safetensors, a PyTorch zip checkpoint, a PyTorch legacy (pre-1.6) pickle, an F32 GGUF and an
ONNX model with external data, then times, each in a fresh Python process:

* ``keishiki.inspect(path)`` (the library call; import time reported separately),
* ``keishiki info PATH --json`` as a subprocess (interpreter start-up included),
* the usual way to open that format: ``torch.load(mmap=True, weights_only=True)`` (zip),
  ``torch.load(weights_only=True)`` (legacy pickles cannot be memory-mapped),
  ``gguf.GGUFReader``, ``onnx.load`` (with and without its external data) and, for
  safetensors, ``safe_open`` (lazy) and ``load_file``.

Each measurement runs ``--repeat`` times in a new process; the table shows the median time
of the operation itself (after a warm-up call on a one-tensor file of the same format), the
median wall time of a whole fresh process (start-up and imports included: ``keishiki info``
as a command against a script doing the baseline), and the largest peak RSS (VmHWM).  Files
are read from a warm page cache (they were just written) unless ``--cold``, which evicts
them with ``posix_fadvise(DONTNEED)`` before every run.  Needs about 10 GB of free disk; the
files are deleted afterwards unless ``--keep``.  Formats whose keishiki reader is not
installed are skipped.

    python benchmarks/bench_info.py                 # build in a temp dir, measure, delete
    python benchmarks/bench_info.py --out /data/b --keep --repeat 5
"""

from __future__ import annotations

import argparse
import importlib.util
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

import numpy as np

FILES = {
    "safetensors": "model.safetensors",
    "pytorch-zip": "model_zip.pt",
    "pytorch-legacy": "model_legacy.pt",
    "gguf": "model.gguf",
    "onnx-external": "onnx_external",  # a folder: model.onnx + model.onnx.data
}
READER_MODULE = {
    "safetensors": "safetensors",
    "pytorch-zip": "pytorch",
    "pytorch-legacy": "pytorch",
    "gguf": "gguf",
    "onnx-external": "onnx",
}

# child program: prints {"op_s", "n", "hwm_kb"}; argv = path, warm-up path or ""
# The warm-up call on a one-tensor file of the same format pays the one-time costs (lazy
# imports, first-call initialisation) on both sides, so "op" times the work that grows with
# the model.  Peak RSS is the process's own VmHWM (ru_maxrss would include the memory of the
# benchmark process it was forked from).
_CHILD = """
import json, sys, time
P, WARM = sys.argv[1], sys.argv[2]
{setup}
def op(P):
{op}
    return n
if WARM:
    op(WARM)
t = time.perf_counter()
n = op(P)
op_s = time.perf_counter() - t
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({{"op_s": op_s, "n": n, "hwm_kb": hwm}}))
"""
KEISHIKI = ("import keishiki, keishiki.formats", "info = keishiki.inspect(P); n = info.n_tensors")
BASELINES = {
    "safetensors": [
        (
            "safetensors.safe_open (lazy)",
            "from safetensors import safe_open",
            "f = safe_open(P, framework='pt'); n = len([f.get_slice(k).get_shape() for k in f.keys()])",
        ),
        (
            "safetensors.torch.load_file",
            "from safetensors.torch import load_file",
            "n = len(load_file(P))",
        ),
    ],
    "pytorch-zip": [
        (
            "torch.load(mmap=True, weights_only=True)",
            "import torch",
            "n = len(torch.load(P, mmap=True, weights_only=True))",
        )
    ],
    "pytorch-legacy": [
        (
            "torch.load(weights_only=True)",
            "import torch",
            "n = len(torch.load(P, weights_only=True))",
        )
    ],
    "gguf": [("gguf.GGUFReader", "from gguf import GGUFReader", "n = len(GGUFReader(P).tensors)")],
    "onnx-external": [
        ("onnx.load", "import onnx", "n = len(onnx.load(P + '/model.onnx').graph.initializer)"),
        (
            "onnx.load(load_external_data=False)",
            "import onnx",
            "n = len(onnx.load(P + '/model.onnx', load_external_data=False).graph.initializer)",
        ),
    ],
}


# ---- building the checkpoints -------------------------------------------------------------------


def _names(n: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(n)]


def build_safetensors(path: Path, base: np.ndarray, n: int) -> None:
    from keishiki.core.tensor import LazyTensor, TensorInfo
    from keishiki.formats import safetensors as st

    lazies = [
        LazyTensor(TensorInfo(k, "float32", base.shape, base.nbytes), lambda: base)
        for k in _names(n)
    ]
    with open(path, "wb") as fh:
        st.write(fh, lazies)


def build_pytorch(path: Path, base: np.ndarray, n: int, legacy: bool) -> None:
    import torch

    # separate storages: torch.save writes a shared storage only once
    state = {k: torch.from_numpy(base).clone() for k in _names(n)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


def build_gguf(path: Path, base: np.ndarray, n: int) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bench")
    for k in _names(n):
        writer.add_tensor(k, base)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_onnx_external(folder: Path, base: np.ndarray, n: int) -> None:
    """One MatMul per weight, every initializer in model.onnx.data (streamed, not in memory)."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = base.shape
    inits, nodes, outputs = [], [], []
    with open(folder / "model.onnx.data", "wb") as fh:
        for i, name in enumerate(_names(n)):
            offset = fh.tell()
            fh.write(base.tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, cols])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", "model.onnx.data"),
                ("offset", str(offset)),
                ("length", str(base.nbytes)),
            ):
                t.external_data.add(key=key, value=value)
            inits.append(t)
            nodes.append(helper.make_node("MatMul", ["x", name], [f"y{i}"]))
            outputs.append(
                helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", cols])
            )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])
    model = helper.make_model(
        helper.make_graph(nodes, "bench", [x], outputs, inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(folder / "model.onnx"))


def build_all(out: Path, formats: list[str], n: int, shape: tuple[int, int]) -> None:
    """The big checkpoints in ``out`` and one-tensor warm-up twins in ``out/warm``."""
    (out / "warm").mkdir(parents=True, exist_ok=True)
    _build(out / "warm", formats, 1, (8, 8), quiet=True)
    _build(out, formats, n, shape)


def _build(
    out: Path, formats: list[str], n: int, shape: tuple[int, int], quiet: bool = False
) -> None:
    base = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    builders = {
        "safetensors": lambda p: build_safetensors(p, base, n),
        "pytorch-zip": lambda p: build_pytorch(p, base, n, legacy=False),
        "pytorch-legacy": lambda p: build_pytorch(p, base, n, legacy=True),
        "gguf": lambda p: build_gguf(p, base, n),
        "onnx-external": lambda p: build_onnx_external(p, base, n),
    }
    for fmt in formats:
        path = out / FILES[fmt]
        if path.exists():
            continue
        start = time.perf_counter()
        builders[fmt](path)
        if not quiet:
            print(
                f"built {fmt:15s} {_size(path) / 2**30:.2f} GiB in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


# ---- measuring ----------------------------------------------------------------------------------

COLD = False  # --cold: evict the checkpoint from the page cache before every run


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (posix_fadvise: no root, nothing else)."""
    for p in path.iterdir() if path.is_dir() else [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(setup: str, op: str, path: Path, warm: Path | None) -> dict:
    """Run one measurement in a fresh interpreter; ``wall_s`` is the whole process."""
    if COLD:
        evict(path)
    code = _CHILD.format(setup=setup, op="    " + op)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(warm or "")], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def run_cli(path: Path) -> dict:
    """``keishiki info PATH --json`` in a subprocess: wall time and peak RSS (read by a
    fresh, small wrapper process, so RUSAGE_CHILDREN is that one command's)."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run([sys.executable, '-m', 'keishiki', 'info', sys.argv[1], '--json'],"
        " capture_output=True)\n"
        "wall = time.perf_counter() - t\n"
        "assert r.returncode == 0, r.stderr\n"
        "n = json.loads(r.stdout)['n_tensors']\n"
        "print(json.dumps({'wall_s': wall, 'n': n, 'hwm_kb': "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    if COLD:
        evict(path)
    out = subprocess.run(
        [sys.executable, "-c", wrapper, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(setup: str, op: str, path: Path, warm: Path, repeat: int) -> dict:
    """Median warm op time, median wall time of a fresh process, largest peak RSS."""
    warm_runs = [run_child(setup, op, path, warm) for _ in range(repeat)]
    fresh_runs = [run_child(setup, op, path, None) for _ in range(repeat)]
    return {
        "op_s": statistics.median(r["op_s"] for r in warm_runs),
        "wall_s": statistics.median(r["wall_s"] for r in fresh_runs),
        "rss_mb": max(r["hwm_kb"] for r in fresh_runs + warm_runs) / 1024,
        "n": warm_runs[0]["n"],
    }


def bench(out: Path, formats: list[str], repeat: int, n: int) -> list[dict]:
    rows = []
    for fmt in formats:
        path, warm = out / FILES[fmt], out / "warm" / FILES[fmt]
        try:
            mine = measure(*KEISHIKI, path, warm, repeat)
            cli_runs = [run_cli(path) for _ in range(repeat)]
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"{fmt:14s} keishiki failed: {exc}", flush=True)
            continue
        cli = {
            "wall_s": statistics.median(r["wall_s"] for r in cli_runs),
            "rss_mb": max(r["hwm_kb"] for r in cli_runs) / 1024,
        }
        assert mine["n"] == cli_runs[0]["n"] == n, (fmt, mine, cli_runs)
        for label, setup, op in BASELINES[fmt]:
            try:
                theirs = measure(setup, op, path, warm, repeat)
            except RuntimeError as exc:
                nan = float("nan")
                theirs = {"op_s": nan, "wall_s": nan, "rss_mb": nan, "error": str(exc)}
            rows.append(
                {
                    "format": fmt,
                    "baseline": label,
                    "size_gib": _size(path) / 2**30,
                    "keishiki_op_s": mine["op_s"],
                    "keishiki_wall_s": mine["wall_s"],
                    "keishiki_rss_mb": mine["rss_mb"],
                    "cli_wall_s": cli["wall_s"],
                    "cli_rss_mb": cli["rss_mb"],
                    "baseline_op_s": theirs["op_s"],
                    "baseline_wall_s": theirs["wall_s"],
                    "baseline_rss_mb": theirs["rss_mb"],
                    "op_speedup": theirs["op_s"] / mine["op_s"],
                    "wall_speedup": theirs["wall_s"] / cli["wall_s"],
                    "error": theirs.get("error"),
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


HEADER = (
    f"{'format':14s} {'baseline':40s} | {'op: keishiki':>12s} {'baseline':>10s} "
    f"{'ratio':>7s} | {'process: CLI':>12s} {'baseline':>9s} {'ratio':>6s} | "
    f"{'peak RSS MB: lib':>16s} {'CLI':>5s} {'baseline':>8s}"
)


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def _row(r: dict) -> str:
    return (
        f"{r['format']:14s} {r['baseline']:40s} | {r['keishiki_op_s'] * 1000:10.2f}ms "
        f"{r['baseline_op_s'] * 1000:8.2f}ms {_ratio(r['op_speedup']):>7s} | "
        f"{r['cli_wall_s']:11.2f}s {r['baseline_wall_s']:8.2f}s "
        f"{_ratio(r['wall_speedup']):>6s} | "
        f"{r['keishiki_rss_mb']:16.0f} {r['cli_rss_mb']:5.0f} {r['baseline_rss_mb']:8.0f}"
        + (f"  ({r['error']})" if r.get("error") else "")
    )


def available_formats(wanted: list[str]) -> list[str]:
    out = []
    for fmt in wanted:
        if importlib.util.find_spec(f"keishiki.formats.{READER_MODULE[fmt]}") is None:
            print(f"skip {fmt}: keishiki has no {READER_MODULE[fmt]} reader yet")
        else:
            out.append(fmt)
    return out


def _clean(out: Path, whole: bool) -> None:
    if whole:
        shutil.rmtree(out, ignore_errors=True)
        return
    shutil.rmtree(out / "warm", ignore_errors=True)
    for name in FILES.values():
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to build (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the built files")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--shape", default="4096x5120", help="ROWSxCOLS of each tensor")
    parser.add_argument("--formats", default=",".join(FILES))
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the checkpoint from the page cache before every run",
    )
    parser.add_argument("--json-out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    global COLD
    COLD = args.cold
    shape = tuple(int(d) for d in args.shape.split("x"))
    formats = available_formats([f for f in args.formats.split(",") if f])
    out = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    need = len(formats) * args.tensors * shape[0] * shape[1] * 4 * 1.05
    if shutil.disk_usage(out).free < need:
        print(f"not enough free disk in {out}: need {need / 2**30:.1f} GiB")
        return 2
    try:
        build_all(out, formats, args.tensors, shape)
        print(
            f"\n{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, repeat {args.repeat}, "
            f"{'cold' if COLD else 'warm'} page cache\n{HEADER}"
        )
        rows = bench(out, formats, args.repeat, args.tensors)
        if args.json_out:
            args.json_out.write_text(json.dumps(rows, indent=1))
    finally:
        if not args.keep:
            _clean(out, whole=args.out is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
