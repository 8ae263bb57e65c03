"""Per-tensor cost of reading torch pickles: ``keishiki.inspect`` against torch's own loaders.

``bench_info.py`` measures the end-to-end figure on a few huge tensors; this one measures
what grows with the *number* of tensors (the pickle walk, naming, storage lookup), where a
checkpoint with thousands of small tensors is the worst case.  It builds, for each tensor
count, a PyTorch zip checkpoint (``torch.save``), the same state_dict as a legacy pickle
(``_use_new_zipfile_serialization=False``) and a TorchScript archive (``torch.jit.save`` of a
module with one ``nn.Linear`` per two tensors), then times, each in a fresh Python process:

* ``keishiki.inspect(path)`` (optionally also the keishiki of another git revision, from
  ``git archive REV src``, for before/after figures on the same machine at the same time),
* ``torch.load(path, mmap=True, weights_only=True)`` (zip), ``torch.load(path,
  weights_only=True)`` (legacy pickles cannot be memory-mapped), ``torch.jit.load(path)``
  (TorchScript),
* the pickle limit: the zip directory and ``data.pkl`` (``constants.pkl`` too for
  TorchScript) read with ``zipfile`` and run through CPython's C unpickler whose
  ``find_class`` returns inert stand-ins (for a legacy file, its five header pickles):
  the floor for any reader that sees every global and storage, so every change is
  measured against it as well as against torch.

``keishiki.inspect`` is timed with its per-file caches cleared before each call, so each
call includes the safety verdict, as the first call on a file does.

Each measurement is the median of ``--repeat`` calls after a warm-up call on a one-tensor
file of the same format (lazy imports and first-call set-up are not counted on either side);
the table shows it in ms and per tensor in µs, the CPU time of the same calls (steadier than
wall time when other work shares the machine), the first call on the file alone, and the
process's peak RSS (VmHWM).

    python benchmarks/bench_pickle.py                          # 300 and 2000 tensors
    python benchmarks/bench_pickle.py --tensors 2000 --elems 65536 --compare-rev HEAD~3
    python benchmarks/bench_pickle.py --out /tmp/b --keep --json-out rows.json
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
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# child program: argv = path, warm-up path, repeat, op kind; prints one JSON object
_CHILD = """
import json, sys, time
path, warm, repeat, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "keishiki":
    import importlib
    import keishiki
    scan_cache = importlib.import_module("keishiki._scan")._CACHE
    shared = getattr(importlib.import_module("keishiki._scan.unpickler"), "_SHARED", [])
    def op(p):  # every call pays for the safety verdict, as the first inspect of a file does
        scan_cache.clear()
        shared.clear()
        return len(keishiki.inspect(p).tensors)
elif kind == "limit":
    # the floor for any reader that must see every global and storage: the zip directory,
    # data.pkl's bytes, and CPython's C unpickler with inert stand-ins (nothing imported)
    import pickle, zipfile
    class Obj:  # what a call of a stand-in returns: takes BUILD, items, appends
        def __init__(self, *args, **kwargs):
            self.args = args
        def __setstate__(self, state):
            self.state = state
        def __setitem__(self, key, value):
            pass
        def append(self, item):
            pass
        extend = add = append
    def stand_in(module, name):
        return type(name, (Obj,), {})
    class Inert(pickle.Unpickler):
        def find_class(self, module, name):
            return stand_in(module, name)
        def persistent_load(self, pid):
            return pid
    def op(p):
        with open(p, "rb") as fh:
            if fh.read(2) == b"PK":
                zf = zipfile.ZipFile(fh)
                names = [n for n in zf.namelist() if n.endswith(("/data.pkl", "/constants.pkl"))]
                for name in names:
                    Inert(zf.open(name), encoding="latin1").load()
                return len(names)
            fh.seek(0)
            reader = Inert(fh, encoding="latin1")  # legacy: its five header pickles
            for _ in range(5):
                reader.load()
            return 5
else:
    import torch
    def op(p):
        if kind == "torch.jit.load":
            m = torch.jit.load(p)
            return len(m.state_dict())
        mmap = kind == "torch.load-mmap"
        return len(torch.load(p, mmap=mmap, weights_only=True))
"""
# the child programs' timing (after they define op(p)): a warm-up on ``warm``, then
# ``repeat`` timed calls on ``path``; prints one JSON object (bench_onnx.py shares it)
TIMED_OPS = """
op(warm)
walls, cpus = [], []
for _ in range(repeat):
    c0, t0 = time.process_time(), time.perf_counter()
    n = op(path)
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"walls": walls, "cpus": cpus, "n": n, "hwm_kb": hwm}))
"""
_CHILD += TIMED_OPS


def build(out: Path, n_tensors: int, elems: int) -> dict[str, Path]:
    """The three files for ``n_tensors`` float32 tensors of ``elems`` elements each."""
    import torch

    rows = max(1, elems // 64)
    cols = max(1, elems // rows)
    state = {
        f"model.layers.{i // 10}.block{i % 10}.weight": torch.randn(rows, cols)
        for i in range(n_tensors)
    }
    paths = {
        "zip": out / f"zip_{n_tensors}.pt",
        "legacy": out / f"legacy_{n_tensors}.pt",
        "torchscript": out / f"ts_{n_tensors}.pt",
    }
    torch.save(state, paths["zip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)

    class Stack(torch.nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(cols, rows) for _ in range(n))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.jit.save(torch.jit.script(Stack(max(1, n_tensors // 2))), paths["torchscript"])
    return paths


def run_child(path: Path, warm: Path, repeat: int, kind: str, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath:  # an older keishiki's src first on the path shadows the editable install
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(warm), str(repeat), kind],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def extract_rev(rev: str, dest: Path) -> Path:
    """``git archive REV src`` unpacked under ``dest``; returns its ``src`` folder."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "rev.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


LIMIT_TEXT = "limit: zip read + C unpickler, inert stand-ins"
BASELINES = {"zip": "torch.load-mmap", "legacy": "torch.load", "torchscript": "torch.jit.load"}
BASELINE_TEXT = {
    "torch.load-mmap": "torch.load(mmap=True, weights_only=True)",
    "torch.load": "torch.load(weights_only=True)",
    "torch.jit.load": "torch.jit.load",
}


def bench(
    out: Path, counts: list[int], elems: int, repeat: int, rev_src: Path | None, rev: str | None
) -> list[dict]:
    (out / "warm").mkdir(parents=True, exist_ok=True)
    warm = build(out / "warm", 1, 64)  # one-tensor files: the warm-up call of each process
    rows = []
    for count in counts:
        folder = out / str(count)
        folder.mkdir(parents=True, exist_ok=True)
        paths = build(folder, count, elems)
        for fmt, path in paths.items():
            runs = [("keishiki", "keishiki", None)]
            if rev_src is not None:
                runs.append((f"keishiki@{rev}", "keishiki", str(rev_src)))
            runs.append((BASELINE_TEXT[BASELINES[fmt]], BASELINES[fmt], None))
            runs.append((LIMIT_TEXT, "limit", None))
            for label, kind, pythonpath in runs:
                res = run_child(path, warm[fmt], repeat, kind, pythonpath)
                wall, cpu = statistics.median(res["walls"]), statistics.median(res["cpus"])
                rows.append(
                    {
                        "format": fmt,
                        "tensors": count,
                        "file_mb": path.stat().st_size / 1e6,
                        "reader": label,
                        "n_seen": res["n"],
                        "wall_ms": wall * 1e3,
                        "first_ms": res["walls"][0] * 1e3,
                        "cpu_ms": cpu * 1e3,
                        "us_per_tensor": wall * 1e6 / count,
                        "cpu_us_per_tensor": cpu * 1e6 / count,
                        "peak_rss_mb": res["hwm_kb"] / 1024,
                    }
                )
                r = rows[-1]
                print(
                    f"  {fmt:11s} {count:6d} {label:45s} {r['wall_ms']:9.2f} ms "
                    f"{r['us_per_tensor']:8.2f} µs/tensor  cpu {r['cpu_us_per_tensor']:8.2f} "
                    f"µs/tensor  rss {r['peak_rss_mb']:6.0f} MB",
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| format | tensors | file MB | reader | ms | µs/tensor | CPU µs/tensor | "
        "first call ms | vs keishiki | peak RSS MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours = {(r["format"], r["tensors"]): r["wall_ms"] for r in rows if r["reader"] == "keishiki"}
    for r in rows:
        ratio = r["wall_ms"] / ours[(r["format"], r["tensors"])]
        lines.append(
            f"| {r['format']} | {r['tensors']} | {r['file_mb']:.0f} | {r['reader']} | "
            f"{r['wall_ms']:.2f} | {r['us_per_tensor']:.1f} | "
            f"{r['cpu_us_per_tensor']:.1f} | {r['first_ms']:.1f} | {ratio:.2f}x | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the files, measure, print a markdown table.  Returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tensors",
        type=int,
        nargs="+",
        default=[300, 2000],
        help="tensor counts to build (default: 300 2000)",
    )
    ap.add_argument(
        "--elems",
        type=int,
        default=64 * 1024,
        help="float32 elements per tensor (default 65536: 2000 tensors = 524 MB)",
    )
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per process")
    ap.add_argument("--compare-rev", help="also time keishiki at this git revision")
    ap.add_argument("--out", type=Path, help="folder for the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json-out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="keishiki-bench-pickle-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        rev_src = extract_rev(args.compare_rev, out / "rev") if args.compare_rev else None
        import torch

        print(
            f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}; files in {out}",
            flush=True,
        )
        rows = bench(out, args.tensors, args.elems, args.repeat, rev_src, args.compare_rev)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print()
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
