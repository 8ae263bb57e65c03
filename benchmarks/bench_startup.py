"""How long a whole ``keishiki`` process takes when there is little to do (issue 12).

Times, each in a fresh process, alternating round by round (best of ``--repeat``; wall and
CPU time of the child):

* ``keishiki --help`` and ``keishiki info SMALL.safetensors`` (goals: ≤ 0.15 s and ≤ 0.25 s
  wall), against ``python -c pass`` (the interpreter) and ``python -c "import typer"`` (the
  CLI framework alone);
* ``keishiki scan`` of a folder of 200 small ``torch.save`` files and of one ``torch.save``
  file in a Llama-7B layout (291 tensors, ``--big-gb`` in all: 1.9 GB by default) (goals:
  ≤ 1.0x) against ``picklescan --path`` on the same folder and file.

Each figure is measured with bytecode caching on (a fresh ``PYTHONPYCACHEPREFIX``, written by
a warm-up run: what an installed package has) and, with ``--bytecode both``, as the
environment is (this VM exports ``PYTHONDONTWRITEBYTECODE=1``: modules without a cached
``.pyc`` are compiled on every start).  ``--compare-rev REV`` also times keishiki at that git
revision (``git archive REV src`` on ``PYTHONPATH``), alternating with the working tree.

Needs torch (to write the ``.pt`` files) and picklescan (``pip install -e '.[bench]'``).

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeat 15 --compare-rev HEAD --bytecode both

Exit code 1 when a goal is missed (wall time, best of the runs: on a loaded machine it may
be; the CPU column says what the process itself cost).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pickle import extract_rev  # noqa: E402 - one `git archive` helper

BIN = Path(sys.executable).parent
GOALS = {"keishiki --help": 0.15, "keishiki info": 0.25}


def small_safetensors(path: Path) -> None:
    """A 3-tensor safetensors file, written by hand (no numpy or torch in the way)."""
    header, offset = {}, 0
    for name, shape in (("embed.weight", [4, 8]), ("norm.weight", [8]), ("head.weight", [8, 4])):
        size = 4 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def torch_folder(folder: Path, count: int) -> None:
    """``count`` small ``torch.save`` state_dicts (a layer's weight and bias each)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        state = {"fc.weight": torch.randn(8, 8), "fc.bias": torch.zeros(8), "step": n}
        torch.save(state, folder / f"ckpt_{n:03d}.pt")


def llama_layout_pt(path: Path, gigabytes: float) -> None:
    """One ``torch.save`` state_dict of 291 float32 zero tensors in Llama-7B's layout (32
    layers of 9 tensors, embeddings, norm, head), widths scaled to ``gigabytes`` in all."""
    import torch

    scale = max(gigabytes / 26.95, 1e-4) ** 0.5  # Llama-7B in float32: 26.95 GB
    hidden, ffn, vocab = max(8, int(4096 * scale)), max(8, int(11008 * scale)), 32000
    state = {"model.embed_tokens.weight": torch.zeros(vocab, hidden)}
    for i in range(32):
        for name, shape in (
            ("self_attn.q_proj", (hidden, hidden)),
            ("self_attn.k_proj", (hidden, hidden)),
            ("self_attn.v_proj", (hidden, hidden)),
            ("self_attn.o_proj", (hidden, hidden)),
            ("mlp.gate_proj", (ffn, hidden)),
            ("mlp.up_proj", (ffn, hidden)),
            ("mlp.down_proj", (hidden, ffn)),
            ("input_layernorm", (hidden,)),
            ("post_attention_layernorm", (hidden,)),
        ):
            state[f"model.layers.{i}.{name}.weight"] = torch.zeros(*shape)
    state["model.norm.weight"] = torch.zeros(hidden)
    state["lm_head.weight"] = torch.zeros(vocab, hidden)
    torch.save(state, path)


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def environments(mode: str, tmp: Path) -> dict[str, dict[str, str]]:
    """The environments to measure in: bytecode caching on, and/or as given."""
    out = {}
    if mode in ("on", "both"):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        out["bytecode on"] = env
    if mode in ("as-is", "both"):
        out["as the environment is"] = dict(os.environ)
    return out


def commands(
    small: Path, folder: Path, big: Path, rev_src: Path | None
) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, extra environment)."""
    py, ks, ps = str(BIN / "python"), str(BIN / "keishiki"), str(BIN / "picklescan")
    rows: dict[str, tuple[list[str], dict]] = {
        "python -c pass": ([py, "-c", "pass"], {}),
        "python -c 'import typer'": ([py, "-c", "import typer"], {}),
        "picklescan --path DIR": ([ps, "--path", str(folder)], {}),
        "picklescan --path BIG.pt": ([ps, "--path", str(big)], {}),
    }
    versions = {"": {}}
    if rev_src is not None:
        versions = {" (rev)": {"PYTHONPATH": str(rev_src)}, "": {}}
    for label, extra in versions.items():
        rows[f"keishiki --help{label}"] = ([ks, "--help"], extra)
        rows[f"keishiki info{label}"] = ([ks, "info", str(small)], extra)
        rows[f"keishiki scan DIR{label}"] = ([ks, "scan", str(folder)], extra)
        rows[f"keishiki scan BIG.pt{label}"] = ([ks, "scan", str(big)], extra)
    return rows


def measure(rows: dict, env: dict[str, str], repeat: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU seconds of each row, rounds alternating over the rows."""
    for argv, extra in rows.values():  # warm-up: page cache and, when on, the .pyc files
        run_once(argv, {**env, **extra})
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(repeat):
        for name, (argv, extra) in rows.items():
            times[name].append(run_once(argv, {**env, **extra}))
    return {name: (min(w for w, _ in t), min(c for _, c in t)) for name, t in times.items()}


def missed(best: dict[str, tuple[float, float]]) -> list[str]:
    """The working tree's rows that miss their goal (wall time)."""
    out = [name for name, goal in GOALS.items() if best[name][0] > goal]
    for target in ("DIR", "BIG.pt"):
        if best[f"keishiki scan {target}"][0] > best[f"picklescan --path {target}"][0]:
            out.append(f"keishiki scan {target}")
    return out


def report(best: dict[str, tuple[float, float]]) -> list[str]:
    """Markdown table rows: each keishiki figure against its anchors."""
    base, typer_ = best["python -c pass"], best["python -c 'import typer'"]
    lines = [
        "| command | wall ms | CPU ms | vs `python -c pass` (wall) | vs `import typer` (wall) "
        "| vs picklescan (wall / CPU) | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, (wall, cpu) in best.items():
        anchor, scan_anchor = "-", None
        if name.startswith("keishiki scan"):
            target = name.split()[2]  # DIR or BIG.pt
            scan_anchor = best[f"picklescan --path {target}"]
            anchor = f"{wall / scan_anchor[0]:.2f}x / {cpu / scan_anchor[1]:.2f}x"
        goal = next((g for key, g in GOALS.items() if name.startswith(key)), None)
        verdict = "-"
        if goal is not None:
            verdict = f"≤ {goal:.2f} s: {'met' if wall <= goal else 'NOT met'}"
        elif scan_anchor is not None:
            verdict = f"≤ 1.0x: {'met' if wall <= scan_anchor[0] else 'NOT met'} (wall)"
        lines.append(
            f"| `{name}` | {wall * 1000:.0f} | {cpu * 1000:.0f} | {wall / base[0]:.1f}x "
            f"| {wall / typer_[0]:.2f}x | {anchor} | {verdict} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9, help="rounds (best of them is shown)")
    ap.add_argument("--files", type=int, default=200, help=".pt files in the scanned folder")
    ap.add_argument("--big-gb", type=float, default=1.9, help="size of the one big .pt file")
    ap.add_argument("--bytecode", choices=["on", "as-is", "both"], default="on")
    ap.add_argument("--compare-rev", help="also time keishiki at this git revision")
    args = ap.parse_args()
    if shutil.which("picklescan", path=str(BIN)) is None:
        print("picklescan is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="keishiki-startup-") as name:
        tmp = Path(name)
        small_safetensors(tmp / "small.safetensors")
        torch_folder(tmp / "checkpoints", args.files)
        llama_layout_pt(tmp / "big.pt", args.big_gb)
        rev_src = extract_rev(args.compare_rev, tmp / "rev") if args.compare_rev else None
        rows = commands(tmp / "small.safetensors", tmp / "checkpoints", tmp / "big.pt", rev_src)
        print(
            f"{datetime.date.today()}, {platform.node() or 'this machine'}: {os.cpu_count()} "
            f"CPUs, Python {platform.python_version()}, load average before "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; best of {args.repeat}, "
            f"{args.files} .pt files, one of {args.big_gb} GB"
            + (f"; (rev) = {args.compare_rev}" if args.compare_rev else "")
        )
        failed = []
        for label, env in environments(args.bytecode, tmp).items():
            best = measure(rows, env, args.repeat)
            print(f"\n{label}:\n")
            print("\n".join(report(best)))
            failed += [f"{name} ({label})" for name in missed(best)]
        print(f"\nload average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failed:
        print(f"goals missed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
