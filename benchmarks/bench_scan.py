"""keishiki scan vs picklescan, modelscan and fickling on one generated corpus, in one run.

The corpus is built by ``tests/scan/samples.py``: malicious files in the disguises of the
published scanner bypasses (each payload only creates a marker file) and benign
look-alikes (real torch state_dicts, training checkpoints, numpy pickles...).  For each
tool it prints caught / missed malicious samples, false positives on the benign ones,
errors (the tool reported it could not scan and flagged nothing), crashes (an exception
escaped its API) and the time.  "Caught" means the tool's verdict was not clean: for
keishiki, exit code 1 (dangerous or unknown; keishiki says "dangerous" for every sample).

Exit code 0 only when keishiki catches every sample that any other tool catches, flags no
benign file, and scores more than each other tool, the score being caught malicious minus
flagged benign ("and more": a tool that flags every file, benign ones included, catches
everything by construction, so raw catches alone cannot rank it).

Needs (installs nothing itself): ``pip install -e '.[bench]'`` (picklescan, modelscan,
fickling) and torch.  ``--verify-live`` additionally loads every live sample with its
real loader (pickle.load / torch.load(weights_only=False) / np.load(allow_pickle=True)) in
a subprocess and checks that the marker appears, proving the payloads are real.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.scan.samples import benign, malicious  # noqa: E402


def _keishiki(path: Path) -> str:
    import keishiki

    report = keishiki.scan(path)
    code = report.exit_code()
    return {0: "clean", 1: "flagged", 2: "error"}[code]


def _picklescan(path: Path) -> str:
    from picklescan.scanner import scan_file_path

    result = scan_file_path(str(path))
    if result.issues_count or result.infected_files:
        return "flagged"
    return "error" if result.scan_err else "clean"


def _modelscan(path: Path) -> str:
    from modelscan.modelscan import ModelScan

    result = ModelScan().scan(str(path))
    if result.get("issues"):
        return "flagged"
    return "error" if result.get("errors") else "clean"


def _fickling(path: Path) -> str:
    import fickling

    result = fickling.scan_file(str(path), graceful=True)
    if not result.is_safe:
        return "flagged"
    return "error" if result.errors else "clean"


TOOLS = {"keishiki": _keishiki, "picklescan": _picklescan, "modelscan": _modelscan,
         "fickling": _fickling}


def run_tool(fn, path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            outcome = fn(path)
    except Exception as exc:  # noqa: BLE001 - a crash is a result here
        outcome = f"crash:{type(exc).__name__}"
    return outcome, time.perf_counter() - start


_LOADERS = {
    "pickle": "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))",
    "torch": "import torch,sys; torch.load(sys.argv[1], weights_only=False)",
    "numpy": ("import numpy,sys; d=numpy.load(sys.argv[1], allow_pickle=True); "
              "[d[k] for k in d.files] if hasattr(d,'files') else None"),
}


def verify_live(samples, marker: Path) -> dict[str, bool]:
    """Load each live sample with its real loader in a subprocess; True = marker appeared."""
    out = {}
    for s in samples:
        if not s.live or s.loader not in _LOADERS:
            continue
        if marker.exists():
            marker.unlink()
        with tempfile.TemporaryDirectory() as cwd:
            try:
                subprocess.run([sys.executable, "-c", _LOADERS[s.loader], str(s.path)],
                               cwd=cwd, capture_output=True, timeout=30)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.05)
        out[s.name] = marker.exists()
    if marker.exists():
        marker.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-live", action="store_true",
                        help="also run each live payload with its real loader (harmless: "
                             "it only creates a marker file)")
    parser.add_argument("--list", action="store_true", help="print every sample's results")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    marker = work / "MARKER"
    mal = malicious(work / "malicious", marker)
    ben = benign(work / "benign")
    missing = [t for t in TOOLS if t != "keishiki" and not _importable(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (pip install -e '.[bench]')")
        return 2
    results: dict[str, dict[str, str]] = {t: {} for t in TOOLS}
    times: dict[str, float] = {t: 0.0 for t in TOOLS}
    for tool, fn in TOOLS.items():
        run_tool(fn, ben[0].path)  # warm-up: imports are not part of the timing
        for s in mal + ben:
            outcome, seconds = run_tool(fn, s.path)
            results[tool][s.name] = outcome
            times[tool] += seconds
    assert not marker.exists(), "a payload ran during scanning"
    mal_names = [s.name for s in mal]
    ben_names = [s.name for s in ben]
    rows = []
    caught_sets = {}
    scores: dict[str, int] = {}
    for tool in TOOLS:
        res = results[tool]
        caught = {n for n in mal_names if res[n] == "flagged"}
        caught_sets[tool] = caught
        fps = [n for n in ben_names if res[n] == "flagged"]
        errors = sum(1 for n in mal_names + ben_names if res[n] == "error")
        crashes = sum(1 for n in mal_names + ben_names if res[n].startswith("crash"))
        rows.append((tool, f"{len(caught)}/{len(mal_names)}", len(mal_names) - len(caught),
                     f"{len(fps)}/{len(ben_names)}", errors, crashes, f"{times[tool]:.2f}",
                     len(caught) - len(fps)))
        scores[tool] = len(caught) - len(fps)
    print(f"corpus: {len(mal_names)} malicious, {len(ben_names)} benign samples "
          f"(tests/scan/samples.py)\n")
    header = ("tool", "caught", "missed", "false positives", "errors", "crashes", "time (s)",
              "score")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    others = set().union(*(caught_sets[t] for t in TOOLS if t != "keishiki"))
    only_keishiki = sorted(caught_sets["keishiki"] - others)
    missed_by_all_others = sorted(set(mal_names) - others)
    print(f"\ncaught only by keishiki ({len(only_keishiki)}): {', '.join(only_keishiki)}")
    print(f"missed by every other tool: {len(missed_by_all_others)}")
    if args.list:
        print()
        for n in mal_names + ben_names:
            print(n.ljust(36), "  ".join(f"{t}={results[t][n]}" for t in TOOLS))
    if args.verify_live:
        live = verify_live(mal, marker)
        ran = sorted(n for n, ok in live.items() if ok)
        print(f"\nlive check: {len(ran)}/{len(live)} live payloads ran under their real loader"
              + (f"; did not run: {', '.join(sorted(set(live) - set(ran)))}"
                 if len(ran) < len(live) else ""))
    ok = (others <= caught_sets["keishiki"]
          and all(scores["keishiki"] > scores[t] for t in TOOLS if t != "keishiki")
          and not any(results["keishiki"][n] == "flagged" for n in ben_names))
    print("\nPASS: keishiki catches everything the others catch, and more" if ok else
          "\nFAIL: keishiki missed a sample another tool caught, or flagged a benign file")
    return 0 if ok else 1


def _importable(tool: str) -> bool:
    try:
        __import__(tool)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
