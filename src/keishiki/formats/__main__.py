"""``python -m keishiki.formats [--readme [PATH]]``: print README.md's formats table, or
rewrite it in place from the format registry (:mod:`keishiki.formats.registry`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .registry import readme_table, with_readme_table


def main(argv: list[str] | None = None) -> int:
    """Print the table (no arguments) or rewrite it in ``--readme`` (default README.md)."""
    parser = argparse.ArgumentParser(prog="python -m keishiki.formats", description=__doc__)
    parser.add_argument(
        "--readme",
        nargs="?",
        const="README.md",
        metavar="PATH",
        help="rewrite the table in this README (default: README.md) instead of printing it",
    )
    args = parser.parse_args(argv)
    if args.readme is None:
        print(readme_table())
        return 0
    path = Path(args.readme)
    try:
        text = path.read_text(encoding="utf-8")
        new = with_readme_table(text)
    except (OSError, ValueError) as exc:  # no such file, or no markers: one line, exit code 2
        parser.error(f"{path}: {exc}")
    if new != text:  # a temporary file beside it, then a rename: never half a README
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)
    print(f"{path}: formats table {'rewritten' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
