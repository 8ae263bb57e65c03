"""Split GGUF models: one model stored as ``NAME-00001-of-0000N.gguf`` ... ``NAME-0000N-of-...``.

llama.cpp's ``gguf-split`` and gguf-py's ``GGUFWriter(split_max_tensors=, split_max_size=)``
write them.  Every split is a complete GGUF file holding some of the tensors; the first one
also holds the model's metadata, and each carries ``split.no`` (0-based), ``split.count``
and ``split.tensors.count`` (the whole model's tensor count).  llama.cpp finds the other
splits by name only (``llama_split_path``: ``%s-%05d-of-%05d.gguf``) and refuses a file whose
name disagrees with its ``split.*`` keys (``llama_split_prefix``); keishiki does the same, so
a set it accepts is a set llama.cpp loads.

keishiki reads the set as one model whichever split, or the folder, the user names.  Every
other split is looked up by name in the named file's own folder through the path gate
(:func:`keishiki.core.gate.inside`): a split that is a symlink out of that folder is refused.
This module is a helper of :mod:`.gguf`, not a format of its own (it has no ``sniff``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.source import Source
from ..errors import CorruptFile, InvalidRequest

if TYPE_CHECKING:
    from .gguf import Header

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)
NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SPLITS = 99999  # five digits in the name


def split_name(prefix: str, no: int, count: int) -> str:
    """llama.cpp's ``llama_split_path`` file name; ``no`` counts from 1, as names do.

    >>> split_name("model", 1, 3)
    'model-00001-of-00003.gguf'
    """
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def parse_name(name: str) -> tuple[str, int, int] | None:
    """(prefix, number from 1, count) of a split's file name, None for another name."""
    m = NAME.match(name)
    return (m["prefix"], int(m["no"]), int(m["count"])) if m else None


def is_later_split(name: str) -> bool:
    """Whether ``name`` is a split's name other than the first (``-00002-of-00003.gguf``):
    folder listings name a split model by its first file only."""
    parsed = parse_name(name)
    return parsed is not None and parsed[1] > 1


@dataclass
class SplitSet:
    """The files of one GGUF model, in split order (one file for an unsplit model).

    Attributes:
        root: the folder the files are in (as the user named it: never resolved, so an
            HF cache snapshot's links keep their names).
        names: file names inside ``root``.
        headers: each file's parsed header, in the same order.
    """

    root: Path
    names: list[str]
    headers: list["Header"]

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def paths(self) -> list[Path]:
        return [self.root / n for n in self.names]


def split_keys(path: Path, header: "Header") -> tuple[int, int, int | None] | None:
    """(split.no, split.count, split.tensors.count) of a split file; None when it is not one.

    Raises:
        CorruptFile: the keys are there but not integers in range.
    """
    kv = header.kv
    if SPLIT_COUNT not in kv:
        return None
    no, count, total = kv.get(SPLIT_NO), kv.get(SPLIT_COUNT), kv.get(SPLIT_TENSORS)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (no, count))
    if (
        not ints
        or not 1 <= count <= MAX_SPLITS
        or not 0 <= no < count
        or not (total is None or (isinstance(total, int) and total >= 0))
    ):
        raise CorruptFile(
            path,
            f"split keys out of range: split.no {no!r}, split.count "
            f"{count!r}, split.tensors.count {total!r}",
        )
    return no, count, total


def open_set(path: Path, header: "Header") -> SplitSet:
    """The whole model ``path`` belongs to: every split, checked, or ``path`` alone.

    Args:
        path: the GGUF file the user named (any split).
        header: its parsed header.

    Raises:
        InvalidRequest: a split is missing, or its name leads outside the folder.
        CorruptFile: a split's name and ``split.*`` keys disagree, the splits' tensor counts
            do not add up to ``split.tensors.count``, or two splits hold the same tensor.
    """
    root = path.parent
    keys = split_keys(path, header)
    if keys is None or keys[1] == 1:
        return SplitSet(root, [path.name], [header])
    no, count, _total = keys
    parsed = parse_name(path.name)
    if parsed is None or parsed[1:] != (no + 1, count):
        raise CorruptFile(
            path,
            f"split.no {no} / split.count {count} make it split {no + 1} of "
            f"{count}, but its name is not PREFIX-{no + 1:05d}-of-{count:05d}"
            f".gguf, which is how llama.cpp finds the other splits: rename it",
        )
    prefix = parsed[0]
    names = [split_name(prefix, i, count) for i in range(1, count + 1)]
    headers = [
        header if i == no else _split_header(root, name, i, count, path)
        for i, name in enumerate(names)
    ]
    _check_tensors(SplitSet(root, names, headers))
    return SplitSet(root, names, headers)


def _split_header(root: Path, name: str, index: int, count: int, named: Path) -> "Header":
    """The header of split ``index`` (from 0) of ``count``, found inside ``root``."""
    from ..core.gate import inside
    from .gguf import read_header

    path = inside(root, name)  # a symlink out of the folder is refused here
    if not path.is_file():
        raise InvalidRequest(
            f"{path}: split {index + 1} of {count} is missing (the model "
            f"{named.name} belongs to needs all {count} files in {root})"
        )
    with Source(path) as src:
        header = read_header(src)
    keys = split_keys(path, header)
    if keys is None or keys[:2] != (index, count):
        said = "no split keys" if keys is None else f"split.no {keys[0]} / split.count {keys[1]}"
        raise CorruptFile(
            path,
            f"{said}, but its name makes it split {index + 1} of {count} "
            f"(split.no {index}): not part of the same split model",
        )
    return header


def _check_tensors(parts: SplitSet) -> None:
    """Refuse a set whose tensors do not add up, or that stores one tensor twice."""
    first = parts.paths[0]
    held = sum(len(h.tensors) for h in parts.headers)
    for path, header in zip(parts.paths, parts.headers):
        total = header.kv.get(SPLIT_TENSORS)
        if total is not None and total != held:
            raise CorruptFile(
                path,
                f"split.tensors.count says {total} tensors, but the "
                f"{parts.count} splits hold {held}",
            )
        if header.byte_order != parts.headers[0].byte_order:
            raise CorruptFile(path, f"byte order differs from {first.name}'s")
    seen: dict[str, str] = {}
    for name, header in zip(parts.names, parts.headers):
        for t in header.tensors:
            if t.name in seen:
                raise CorruptFile(parts.root / name, f"tensor {t.name!r} is also in {seen[t.name]}")
            seen[t.name] = name


def model_file(src: Source) -> Path:
    """The GGUF file to read for a folder: its one unsplit file, or a split of its one split
    model (the first when present, so a missing split is named by :func:`open_set`).

    Raises:
        InvalidRequest: the folder holds no GGUF file, or more than one model.
    """
    models: dict[tuple[str, int] | str, list[str]] = {}
    for name in gguf_files(src):
        parsed = parse_name(name)
        key = (parsed[0], parsed[2]) if parsed and parsed[2] > 1 else name
        models.setdefault(key, []).append(name)
    if not models:
        raise InvalidRequest(f"{src.path}: holds no GGUF file")
    if len(models) > 1:
        listed = ", ".join(sorted(v[0] for v in models.values())[:4])
        raise InvalidRequest(
            f"{src.path}: holds {len(models)} GGUF models ({listed}"
            f"{' ...' if len(models) > 4 else ''}); name the file to read"
        )
    (files,) = models.values()
    return src.child(sorted(files)[0])


def gguf_files(src: Source) -> list[str]:
    """Names of the regular files directly inside folder ``src`` that start with ``GGUF``
    and end in ``.gguf`` (symlinks out of the folder are left out)."""
    names = []
    for name in src.files():
        if not name.lower().endswith(".gguf") or not src.has(name):
            continue
        try:
            with open(src.child(name), "rb") as fh:
                if fh.read(4) == b"GGUF":
                    names.append(name)
        except OSError:
            continue
    return names


def model_paths(path: str | Path) -> list[Path]:
    """Every file of the GGUF model at ``path`` (a file, any split, or a folder), in split
    order; the whole set is checked as :func:`open_set` does.

    Raises:
        InvalidRequest, CorruptFile: as :func:`open_set` and :func:`model_file`.
    """
    from .gguf import read_header

    with Source(path) as src:
        file = model_file(src) if src.is_dir else src.path
    with Source(file) as src:
        header = read_header(src)
    return open_set(file, header).paths
