"""Writing a GGUF model as splits (``--split-max-size 2G`` / ``--split-max-tensors N``).

Naming follows gguf-py's ``GGUFWriter`` and llama.cpp's ``convert_hf_to_gguf.py
--split-max-size``: OUT ``model.gguf`` (or the prefix ``model``) names the *stem*, and the
files are ``model-00001-of-0000N.gguf`` ... beside it; ``model.gguf`` itself is not written.
A model that fits in one split is written unsplit as OUT, as gguf-py does.  When OUT is a
folder, the splits go inside it under the folder's name (the ordinary folder output).

Several files cannot be renamed into place in one step, so :func:`atomic_splits` writes and
verifies them in a hidden temporary folder beside OUT (named as :mod:`keishiki.core.atomic`
names its temporaries, so the next run removes it after a kill), then moves the splits out
with the first one last: whenever ``model-00001-of-0000N.gguf`` exists, the whole new set
does, and a set without its first split is refused by every reader (keishiki, llama.cpp).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.atomic import TMP_MARK, fsync_dir, replace_refusal
from ..errors import InvalidRequest
from ..formats.gguf_split import parse_name

# gguf-split's and convert_hf_to_gguf.py's units: K, M, G are powers of 1000
_SI = {"K": "KB", "M": "MB", "G": "GB", "T": "TB"}


def parse_split_size(text: str | int) -> int:
    """``"2G"`` → 2_000_000_000 (gguf-split's ``N(M|G)``, powers of 1000), and whatever
    :func:`keishiki._convert.parse_size` reads (``"500MB"``, ``"2GiB"``, ``1024``).

    Raises:
        InvalidRequest: not a positive size.
    """
    from . import parse_size

    if isinstance(text, str) and text.strip()[-1:].upper() in _SI:
        text = text.strip()[:-1] + _SI[text.strip()[-1].upper()]
    return parse_size(text)


def wants_split(opts) -> bool:
    """Whether ``opts`` (a ConvertOptions) asks for a split GGUF."""
    return bool(getattr(opts, "split_max_size", None) or getattr(opts, "split_max_tensors", None))


def stem_of(out: Path) -> str:
    """The split files' prefix for OUT: its name without ``.gguf``."""
    return out.name[:-5] if out.name.lower().endswith(".gguf") else out.name


def existing_outputs(out: Path) -> list[Path]:
    """What already holds OUT's names: OUT itself and every ``STEM-NNNNN-of-NNNNN.gguf``
    beside it (of any count: a previous run may have made more or fewer splits)."""
    stem = stem_of(out)
    found = [out] if out.exists() or out.is_symlink() else []
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        parsed = parse_name(entry.name)
        if parsed and parsed[0] == stem and entry != out:
            found.append(entry)
    return found


def _check_existing(out: Path, src: Path, force: bool) -> list[Path]:
    """The existing outputs ``force`` will replace; refuse them without it, or when one is
    the input (or inside it) or not a model file."""
    existing = existing_outputs(out)
    src_r = src.resolve()
    for path in existing:
        path_r = path.resolve()
        if path_r == src_r or path_r.is_relative_to(src_r):
            raise InvalidRequest(f"{path}: refusing to write over the input {src}")
    if existing and not force:
        raise InvalidRequest(f"{existing[0]}: already exists (pass force=True to overwrite)")
    for path in existing:
        refusal = replace_refusal(path, False)
        if refusal:
            raise InvalidRequest(f"refusing to replace: {refusal}")
    return existing


@contextmanager
def atomic_splits(out: Path, src: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder for the splits of OUT; on success move them beside
    OUT (first split last) and remove what ``force`` replaces.

    Args:
        out: the output name the user gave (``model.gguf``).
        src: the conversion's input (never written over, nor anything inside it).
        force: replace existing outputs of the same stem (model files only).

    Raises:
        InvalidRequest: an output exists without ``force``, is the input, or is not a model
            file; a file of the new set appeared meanwhile without ``force``.
    """
    existing = _check_existing(out, src, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if tmp.is_dir():  # gone when the output was kept as OUT.unverified
            _move_into_place(tmp, out, existing, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path, existing: list[Path], force: bool) -> None:
    written = sorted(tmp.iterdir())
    targets = [out.parent / p.name for p in written]
    for target in targets:
        if (target.exists() or target.is_symlink()) and target not in existing and not force:
            raise InvalidRequest(
                f"{target}: appeared while keishiki was writing it; left as "
                f"it is (pass force=True to overwrite)"
            )
    for p in written:
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    new = set(targets)
    # an old first split goes before any new split arrives, and the new first split comes
    # last: a kill in between leaves a set without its first split (refused, never mixed)
    firsts = [p for p in existing if p not in new and _is_first(p)]
    rest = [p for p in existing if p not in new and not _is_first(p)]
    for p in firsts:
        p.unlink(missing_ok=True)
    order = sorted(zip(written, targets), key=lambda pair: _is_first(pair[1]))
    for i, (p, target) in enumerate(order):
        if i == len(order) - 1:
            for old in rest:
                old.unlink(missing_ok=True)
        os.replace(p, target)
    fsync_dir(out.parent)


def _is_first(path: Path) -> bool:
    parsed = parse_name(path.name)
    return parsed is None or parsed[1] == 1
