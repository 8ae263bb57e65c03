"""Running a GGUF file: dequantized into a Hugging Face folder once, then the torch backend.

llama.cpp is the GGUF engine, but its Python binding (llama-cpp-python) has no wheel on PyPI
and takes ~10 minutes to build, so keishiki does not depend on it.  transformers reads GGUF
too (``from_pretrained(gguf_file=...)``), dequantizing every tensor; keishiki's own
``gguf -> hf-model`` edge does the same through that reader, with three corrections to its
tokenizer rebuild and a read-back check, so the model is converted with it into a cache
(keyed by the file's path, size and mtime) and run there.  Greedy tokens of an f32/f16 GGUF
equal the original Hugging Face model's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """Where dequantized GGUF models are kept (``$KEISHIKI_CACHE/gguf``)."""
    base = Path(os.environ.get("KEISHIKI_CACHE", Path.home() / ".cache" / "keishiki"))
    return base / "gguf"


def _split_glob(gguf_path: Path) -> str:
    """``stem-*-of-NNNNN.gguf`` for a split file (llama.cpp's naming), else its own name."""
    from ..formats.gguf_split import parse_name

    parsed = parse_name(gguf_path.name)
    if not parsed or parsed[2] <= 1:
        return gguf_path.name
    return f"{parsed[0]}-?????-of-{parsed[2]:05d}.gguf"


def hf_folder_for(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder of ``gguf_path``, converted on first use (verified).

    Raises:
        KeishikiError: the conversion's own refusals (an architecture it cannot map, a GGUF
            without a vocabulary or lacking required metadata, a corrupt file).
    """
    from .._convert import convert

    stamp = hashlib.sha256()
    # every file of a split set: a changed second split must not find the old conversion
    for part in sorted(gguf_path.parent.glob(_split_glob(gguf_path))) or [gguf_path]:
        info = part.stat()
        stamp.update(f"{part.resolve()}:{info.st_size}:{info.st_mtime_ns};".encode())
    target = (cache_dir or cache_root()) / f"{gguf_path.stem}-{stamp.hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf_path, target, to="hf-model", quiet=True, strict=True)
    return target
