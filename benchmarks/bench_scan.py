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
real loader in a subprocess (pickle.load, pickle.load until EOF, torch.load(weights_only=
False), np.load(allow_pickle=True), joblib.load, torch.jit.load + one call, Keras
load_model with safe_mode=False, transformers AutoConfig with trust_remote_code=True) and
checks that the marker appears, proving the payloads are real.  Keras is not a keishiki
dependency: point ``KERAS_PATH`` at a ``pip install --target DIR keras`` (torch backend).
Folder samples (HF checkpoints) are scanned as folders by every tool (picklescan's
directory scan, fickling file by file).
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
    from picklescan.scanner import scan_directory_path, scan_file_path

    result = (scan_directory_path if path.is_dir() else scan_file_path)(str(path))
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

    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    results = [fickling.scan_file(str(f), graceful=True) for f in files]
    if any(not r.is_safe for r in results):
        return "flagged"
    return "error" if any(r.errors for r in results) else "clean"


TOOLS = {
    "keishiki": _keishiki,
    "picklescan": _picklescan,
    "modelscan": _modelscan,
    "fickling": _fickling,
}


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
    # readers that load every pickle of a stream until EOF (history logs, multi-dumps)
    "pickle-all": ("import pickle,sys\nf=open(sys.argv[1],'rb')\nwhile True:\n    pickle.load(f)"),
    "torch": "import torch,sys; torch.load(sys.argv[1], weights_only=False)",
    "torch-export": "import torch,sys; torch.export.load(sys.argv[1])",
    "numpy": (
        "import numpy,sys; d=numpy.load(sys.argv[1], allow_pickle=True); "
        "[d[k] for k in d.files] if hasattr(d,'files') else None"
    ),
    "joblib": "import joblib,sys; joblib.load(sys.argv[1])",
    # the TorchScript loader, then one call: code in forward runs only when called
    "torchscript": ("import torch,sys; m=torch.jit.load(sys.argv[1]); m(torch.ones(2))"),
    # Keras 3 defaults (safe_mode=True); needs keras on the path (KERAS_PATH, torch backend)
    "keras": (
        "import os,sys; os.environ['KERAS_BACKEND']='torch'; import keras; "
        "keras.saving.load_model(sys.argv[1])"
    ),
    "keras-unsafe": (
        "import os,sys; os.environ['KERAS_BACKEND']='torch'; import keras; "
        "keras.saving.load_model(sys.argv[1], safe_mode=False)"
    ),
    # what `transformers` does for a folder with auto_map when the user trusts it
    "hf-remote-code": (
        "import sys, transformers; "
        "transformers.AutoConfig.from_pretrained(sys.argv[1], "
        "trust_remote_code=True)"
    ),
    "hf-remote-code-tokenizer": (
        "import sys, transformers; "
        "transformers.AutoTokenizer.from_pretrained(sys.argv[1], "
        "trust_remote_code=True)"
    ),
    # how llama-cpp-python < 0.2.72 rendered a model's chat template (CVE-2024-34359)
    "jinja-unsandboxed": (
        "import sys, jinja2; jinja2.Environment().from_string("
        "open(sys.argv[1]).read()).render(messages=[])"
    ),
    "gguf-template-unsandboxed": (
        "import sys, gguf, jinja2; f = gguf.GGUFReader(sys.argv[1]).fields"
        "['tokenizer.chat_template']; t = bytes(f.parts[f.data[0]]).decode(); "
        "jinja2.Environment().from_string(t).render(messages=[])"
    ),
}


def loads_live(sample, marker: Path, timeout: float = 60) -> bool:
    """Open ``sample`` with its real loader in a subprocess; True when the marker appeared."""
    if marker.exists():
        marker.unlink()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if sample.loader.startswith("keras") and os.environ.get("KERAS_PATH"):
        env["PYTHONPATH"] = os.environ["KERAS_PATH"]
    target = getattr(sample, "target", None) or sample.path
    with tempfile.TemporaryDirectory() as cwd:
        try:
            subprocess.run(
                [sys.executable, "-c", _LOADERS[sample.loader], str(target)],
                cwd=cwd,
                capture_output=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.05)
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


def verify_live(samples, marker: Path) -> dict[str, bool]:
    """Load each live sample with its real loader in a subprocess; True = marker appeared."""
    return {s.name: loads_live(s, marker) for s in samples if s.live and s.loader in _LOADERS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verify-live",
        action="store_true",
        help="also run each live payload with its real loader (harmless: "
        "it only creates a marker file)",
    )
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
        rows.append(
            (
                tool,
                f"{len(caught)}/{len(mal_names)}",
                len(mal_names) - len(caught),
                f"{len(fps)}/{len(ben_names)}",
                errors,
                crashes,
                f"{times[tool]:.2f}",
                len(caught) - len(fps),
            )
        )
        scores[tool] = len(caught) - len(fps)
    print(
        f"corpus: {len(mal_names)} malicious, {len(ben_names)} benign samples "
        f"(tests/scan/samples.py)\n"
    )
    header = (
        "tool",
        "caught",
        "missed",
        "false positives",
        "errors",
        "crashes",
        "time (s)",
        "score",
    )
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
        print(
            f"\nlive check: {len(ran)}/{len(live)} live payloads ran under their real loader"
            + (
                f"; did not run: {', '.join(sorted(set(live) - set(ran)))}"
                if len(ran) < len(live)
                else ""
            )
        )
    ok = (
        others <= caught_sets["keishiki"]
        and all(scores["keishiki"] > scores[t] for t in TOOLS if t != "keishiki")
        and not any(results["keishiki"][n] == "flagged" for n in ben_names)
    )
    print(
        "\nPASS: keishiki catches everything the others catch, and more"
        if ok
        else "\nFAIL: keishiki missed a sample another tool caught, or flagged a benign file"
    )
    return 0 if ok else 1


def _importable(tool: str) -> bool:
    try:
        __import__(tool)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
