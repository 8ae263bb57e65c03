"""Per-initializer cost of ``keishiki.inspect`` on ONNX, against ``onnx.load`` (issue 12).

Builds, for each initializer count, an ONNX model whose weights are all in external data
(one MatMul per initializer, as ``bench_info.py`` builds it; small tensors, since the bytes
in ``model.onnx.data`` are never read by either side), then times, each in a fresh Python
process after a warm-up call on a one-initializer twin:

* ``keishiki.inspect(folder)`` with its per-file caches cleared before each call, so every
  call pays for identification, the reader and the safety verdict (external-data locations
  checked against the folder), as the first call on a file does;
* optionally the keishiki of another git revision (``--compare-rev``: ``git archive REV
  src`` first on ``PYTHONPATH``) or source folder (``--compare-src``), for before/after
  figures at the same time;
* ``onnx.load(model.onnx, load_external_data=False)``: protobuf's C parser, nothing checked.

Each row is the median of ``--repeat`` calls per process (wall and CPU time), the best of
``--processes`` processes; ``ratio`` is keishiki's time over onnx's.  The whole-process
figure is ``keishiki info FOLDER --json`` as a command (interpreter start-up and imports
included), against ``python -c "import onnx; onnx.load(...)"``.

The children keep their bytecode in a folder of their own (``PYTHONPYCACHEPREFIX``), even
where ``PYTHONDONTWRITEBYTECODE`` is set, so that the whole-process figures do not include
compiling keishiki's modules again in every process.

``--embedded-gb G`` also writes a model with G GB of weights embedded in the protobuf
(raw_data; written field by field, so the 2 GB protobuf limit does not apply) and reports the
peak RSS (VmHWM) of a process running ``keishiki.inspect`` on it (goal: under 150 MB).

    python benchmarks/bench_onnx.py                              # 291 and 1024 initializers
    python benchmarks/bench_onnx.py --compare-rev HEAD --embedded-gb 2
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_info import build_onnx_external  # noqa: E402 - the same model layout
from bench_pickle import TIMED_OPS, extract_rev  # noqa: E402 - shared helpers

# child program: argv = folder, warm-up folder, repeat, kind; prints one JSON object
_CHILD = """
import json, sys, time
path, warm, repeat, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "keishiki":
    import importlib
    import keishiki
    caches = [importlib.import_module("keishiki._scan")._CACHE]
    onnx_module = importlib.import_module("keishiki.formats.onnx")
    parsed = getattr(importlib.import_module("keishiki.formats"), "onnx_upb", None)
    if parsed is not None:  # the last upb parse, kept for the scan of the same bytes
        caches.append(parsed._LAST)
    def op(p):  # every call pays for the safety verdict, as the first inspect of a file does
        for cache in caches:
            cache.clear()
        onnx_module._parse_cached.cache_clear()
        return keishiki.inspect(p).n_tensors
else:
    import onnx
    def op(p):
        return len(onnx.load(p + "/model.onnx", load_external_data=False).graph.initializer)
"""
_CHILD += TIMED_OPS

# peak RSS of one inspect of a big embedded model, in a process of its own
_RSS_CHILD = """
import json, sys
import keishiki
info = keishiki.inspect(sys.argv[1])
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"n": info.n_tensors, "nbytes": info.total_bytes, "hwm_kb": hwm}))
"""


PYCACHE: Path | None = None  # where the children keep their bytecode (see main)


def _env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if PYCACHE is not None:  # compiled once, as in an installed package
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if pythonpath:  # an older keishiki's src first on the path shadows the editable install
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(path: Path, warm: Path, repeat: int, kind: str, pythonpath: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(warm), str(repeat), kind],
        capture_output=True,
        text=True,
        env=_env(pythonpath),
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_process(path: Path, kind: str, pythonpath: str | None) -> float:
    """Wall seconds of a whole process: ``keishiki info --json`` or a script doing onnx.load."""
    if kind == "onnx":
        cmd = [
            sys.executable,
            "-c",
            "import sys, onnx; onnx.load(sys.argv[1] + '/model.onnx', load_external_data=False)",
            str(path),
        ]
    else:
        cmd = [sys.executable, "-m", "keishiki", "info", str(path), "--json"]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=_env(pythonpath), check=True)
    return time.perf_counter() - start


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def build_embedded(path: Path, total_bytes: int, tensor_bytes: int = 128 << 20) -> int:
    """A ModelProto with ``total_bytes`` of float32 initializers in raw_data, written field
    by field (the graph's length is known up front).  Returns the number of initializers."""
    count = max(1, round(total_bytes / tensor_bytes))
    rows = tensor_bytes // 4 // 1024
    chunk = np.ones(1 << 20, np.float32).tobytes()  # 4 MiB written over and over

    def header(i: int) -> bytes:  # a TensorProto up to its raw_data's bytes
        dims = _varint(1 << 3 | 0) + _varint(rows) + _varint(1 << 3 | 0) + _varint(1024)
        fields = dims + _varint(2 << 3 | 0) + _varint(1) + _field(8, f"w{i}".encode())
        return fields + _varint(9 << 3 | 2) + _varint(rows * 1024 * 4)

    tensors = [header(i) for i in range(count)]
    sizes = [len(h) + rows * 1024 * 4 for h in tensors]
    graph_len = sum(len(_varint(5 << 3 | 2)) + len(_varint(s)) + s for s in sizes)
    graph_len += len(_field(2, b"embedded"))
    with open(path, "wb") as fh:
        fh.write(_varint(1 << 3 | 0) + _varint(8))  # ir_version 8
        fh.write(_field(8, _varint(2 << 3 | 0) + _varint(17)))  # opset_import: ai.onnx 17
        fh.write(_varint(7 << 3 | 2) + _varint(graph_len))
        fh.write(_field(2, b"embedded"))
        for h, size in zip(tensors, sizes):
            fh.write(_varint(5 << 3 | 2) + _varint(size) + h)
            left = rows * 1024 * 4
            while left:
                fh.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return count


def bench(
    out: Path, counts: list[int], repeat: int, processes: int, rev_src: Path | None, rev: str
) -> list[dict]:
    warm = out / "warm"
    build_onnx_external(warm, np.ones((16, 16), np.float32), 1)
    rows = []
    for count in counts:
        folder = out / str(count)
        build_onnx_external(folder, np.ones((16, 16), np.float32), count)
        runs = [("keishiki", "keishiki", None)]
        if rev_src is not None:
            runs.append((f"keishiki@{rev}", "keishiki", str(rev_src)))
        runs.append(("onnx.load(load_external_data=False)", "onnx", None))
        results: dict[str, list[dict]] = {label: [] for label, _k, _p in runs}
        whole: dict[str, list[float]] = {label: [] for label, _k, _p in runs}
        for _ in range(processes):  # alternating, so the machine's load hits all alike
            for label, kind, pythonpath in runs:
                results[label].append(run_child(folder, warm, repeat, kind, pythonpath))
                whole[label].append(run_process(folder, kind, pythonpath))
        for label, _kind, _pythonpath in runs:
            per = results[label]
            rows.append(
                {
                    "initializers": count,
                    "reader": label,
                    "n_seen": per[0]["n"],
                    "wall_ms": min(statistics.median(r["walls"]) for r in per) * 1e3,
                    "cpu_ms": min(statistics.median(r["cpus"]) for r in per) * 1e3,
                    "process_s": min(whole[label]),
                    "peak_rss_mb": max(r["hwm_kb"] for r in per) / 1024,
                }
            )
    base = {r["initializers"]: r for r in rows if r["reader"].startswith("onnx")}
    for r in rows:
        b = base[r["initializers"]]
        r["wall_ratio"] = r["wall_ms"] / b["wall_ms"]
        r["cpu_ratio"] = r["cpu_ms"] / b["cpu_ms"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| initializers | reader | op wall ms | op CPU ms | x onnx (wall) | x onnx (CPU) | "
        "whole process s | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['initializers']} | {r['reader']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | "
            f"{r['wall_ratio']:.1f}x | {r['cpu_ratio']:.1f}x | {r['process_s']:.3f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def embedded_rss(out: Path, gigabytes: float, rev_src: Path | None, rev: str) -> list[str]:
    path = out / "embedded.onnx"
    start = time.perf_counter()
    count = build_embedded(path, int(gigabytes * 1e9))
    lines = [
        f"built {path.stat().st_size / 1e9:.2f} GB, {count} embedded initializers in "
        f"{time.perf_counter() - start:.0f} s"
    ]
    for label, pythonpath in [("keishiki", None)] + (
        [(f"keishiki@{rev}", str(rev_src))] if rev_src else []
    ):
        res = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(path)],
            capture_output=True,
            text=True,
            env=_env(pythonpath),
            check=True,
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        lines.append(
            f"{label}: inspect of the embedded model: {r['n']} tensors, "
            f"{r['nbytes'] / 1e9:.2f} GB, peak RSS {r['hwm_kb'] / 1024:.0f} MB"
        )
    path.unlink()
    return lines


def main(argv: list[str] | None = None) -> int:
    """Build the models, measure, print a markdown table.  Returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, nargs="+", default=[291, 1024])
    ap.add_argument("--repeat", type=int, default=9, help="timed calls per process")
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per reader")
    ap.add_argument("--compare-rev", help="also time keishiki at this git revision")
    ap.add_argument(
        "--compare-src", type=Path, help="also time the keishiki package in this src folder"
    )
    ap.add_argument("--embedded-gb", type=float, help="also measure peak RSS on this many GB")
    ap.add_argument("--out", type=Path, help="folder for the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json-out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-onnx-"))
    out.mkdir(parents=True, exist_ok=True)
    global PYCACHE
    PYCACHE = out / "pycache"
    try:
        rev_src = extract_rev(args.compare_rev, out / "rev") if args.compare_rev else None
        if args.compare_src:
            rev_src, args.compare_rev = args.compare_src.resolve(), str(args.compare_src)
        import onnx

        load = os.getloadavg()
        print(
            f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"onnx {onnx.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
            flush=True,
        )
        rows = bench(out, args.tensors, args.repeat, args.processes, rev_src, args.compare_rev)
        print(table(rows), flush=True)
        if args.embedded_gb:
            for line in embedded_rss(out, args.embedded_gb, rev_src, args.compare_rev):
                print(line, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
