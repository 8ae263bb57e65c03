"""Arguments several commands share: a MODEL that is a local path or an ``hf://`` reference."""

from __future__ import annotations

from pathlib import Path


def model_path(text: str) -> Path:
    """A command's model argument as a local path: ``hf://org/name[@rev][/file]`` is the
    cached snapshot (pulled first, with a line on stderr, when the cache lacks it).

    Used as typer's ``parser=``: typer would otherwise make ``Path("hf://org/name")``, which
    folds the ``//``.
    """
    if text.startswith("hf://"):
        from ..hub.resolve import local_path

        return local_path(text, say=_notice)
    return Path(text)


def _notice(line: str) -> None:
    """One line on stderr, as the CLI's errors are (text from the user and the Hub escaped);
    none with --quiet."""
    import sys

    from .output import OUTPUT
    from .plain import printable

    if OUTPUT.quiet:
        return

    sys.stderr.write(f"keishiki: {printable(line)}\n")
    sys.stderr.flush()


HF_HELP = " A Hub model as hf://ORG/NAME[@REV][/FILE] is read from the cache, or pulled first."
