"""Run every benchmark in turn (``make bench``): each prints its own table of ratios.

The info and convert benchmarks build ~2 GB files in a temp folder (about 10 GB free disk
needed) and take minutes; scan needs the ``bench`` extra (picklescan, modelscan, fickling).
Pass names to run only some: ``python benchmarks/run_all.py info scan``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["startup", "info", "pickle", "onnx", "scan", "convert", "runtimes", "hub", "serve"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"\n===== benchmarks/{script.name} =====", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed or missed their target: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
