"""Hugging Face ↔ GGUF names: the GGUF file's architecture and head counts, the name tables
(the converter's for the architectures it writes, else the gguf package's), and what a pair
has to undo: llama.cpp's Q/K row permutation, gemma's ``w + 1`` norms."""

from __future__ import annotations

import re
from typing import Any

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo
from .names import strip_wrappers

LLAMA_ROPE = {"attn_q", "attn_k"}  # llama.cpp permutes these rows for its rotary layout


def gguf_pairs(
    a: ModelInfo, b: ModelInfo, left: dict[str, TensorInfo], right: dict[str, TensorInfo]
) -> list[tuple[str, str, str | None, dict]]:
    """HF ↔ GGUF pairs by the gguf package's name table for the GGUF file's architecture.

    Args:
        a, b: the two models; nothing is paired unless exactly one of them is GGUF.
        left, right: A's and B's unpaired tensors by name (read, not changed).

    Returns:
        ``(a_name, b_name, transform, extra)`` for each pair: ``transform`` is the llama
        rotary (un)permutation for ``attn_q`` / ``attn_k`` (``extra["n_head"]`` its heads).
    """
    if (a.format == "gguf") == (b.format == "gguf"):
        return []
    gguf_side, gguf_names, other_names = (
        (a, left, right) if a.format == "gguf" else (b, right, left)
    )
    arch = gguf_architecture(gguf_side)
    written = _converter_arch(arch)
    table = _gguf_table(arch, gguf_names)
    if table is None:  # no gguf package, or an architecture it does not know
        return []
    forward = written.name_maps(_n_blocks(gguf_names))[0] if written is not None else {}
    heads = _gguf_heads(gguf_side, arch)
    out = []
    taken: set[str] = set()
    for name in other_names:
        # the converter's own names first (what keishiki and llama.cpp write for the arch),
        # then the gguf package's table for the file's architecture
        target = forward.get(strip_wrappers(name)) or _hf_to_gguf(table, name)
        if target is None or target not in gguf_names or target in taken:
            continue
        taken.add(target)
        transform, extra = None, {}
        kind = target.split(".")[-2] if target.count(".") >= 2 else ""
        offset = written.offset_of(strip_wrappers(name)) if written is not None else 0.0
        if arch == "llama" and kind in LLAMA_ROPE and heads:
            # B's array lines up with A's after (un)doing llama.cpp's permutation
            transform = "llama-rope-unpermute" if b is gguf_side else "llama-rope-permute"
            extra = {"n_head": heads[0] if kind == "attn_q" else heads[1]}
        elif offset:
            # gemma: llama.cpp stores RMSNorm weights as w + 1
            transform = "subtract-offset" if b is gguf_side else "add-offset"
            extra = {"offset": offset}
        a_name, b_name = (target, name) if a.format == "gguf" else (name, target)
        out.append((a_name, b_name, transform, extra))
    return out


def gguf_architecture(info: ModelInfo) -> str | None:
    """``general.architecture`` of a GGUF ModelInfo (from its ``gguf`` facts or metadata)."""
    arch = (info.gguf or {}).get("architecture") or _gguf_kv(info, "general.architecture")
    return str(arch) if arch else None


def _gguf_kv(info: ModelInfo, key: str) -> Any:
    """``key`` from the reader's GGUF key/values, else from the metadata; None if absent."""
    for source in ((info.gguf or {}).get("kv") or {}, info.metadata or {}):
        if key in source:
            value = source[key]
            # a reader that records {"type": ..., "value": ...}
            return value.get("value") if isinstance(value, dict) else value
    return None


def _gguf_heads(info: ModelInfo, arch: str | None) -> tuple[int, int] | None:
    n_head = _gguf_kv(info, f"{arch}.attention.head_count")
    n_kv = _gguf_kv(info, f"{arch}.attention.head_count_kv") or _kv_heads(info, arch, n_head)
    try:
        return (int(n_head), int(n_kv or n_head)) if n_head else None
    except (TypeError, ValueError):
        return None


def _kv_heads(info: ModelInfo, arch: str | None, n_head: Any) -> int | None:
    """KV heads of a GGUF that omits ``head_count_kv``: ``blk.0.attn_k.weight``'s rows over
    the head size (the converter reads them the same way)."""
    try:
        head_dim = _gguf_kv(info, f"{arch}.attention.key_length") or (
            int(_gguf_kv(info, f"{arch}.embedding_length")) // int(n_head)
        )
        k = next(t for t in info.tensors if t.name == "blk.0.attn_k.weight")
        heads, rest = divmod(int(k.shape[0]), int(head_dim))
    except (StopIteration, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return heads if heads and not rest else None


def _n_blocks(gguf_names: dict[str, TensorInfo]) -> int:
    blocks = [int(m.group(1)) for n in gguf_names if (m := re.match(r"blk\.(\d+)\.", n))]
    return max(blocks, default=-1) + 1


def _converter_arch(arch: str | None):
    """keishiki's converter description of ``arch`` (names, norm offsets), None if it has
    none or the converter's table cannot be built here (no gguf package)."""
    try:
        from .._convert.gguf_archs import ARCHS

        written = ARCHS.get(arch or "")
        if written is not None:
            written.name_maps(0)  # raises when the gguf package lacks the architecture
        return written
    except Exception:  # ImportError, an old gguf package: fall back to the tables below
        return None


def _gguf_table(arch: str | None, gguf_names: dict[str, TensorInfo]):
    if not arch:
        return None
    try:
        import gguf
    except ImportError:
        return None
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        return None
    return gguf.get_tensor_name_map(arch_enum, _n_blocks(gguf_names))


def _hf_to_gguf(table, name: str) -> str | None:
    """The GGUF name of HF tensor ``name`` by the gguf package's table for the file's
    architecture, trying the name without leading dotted components too
    (``bert.embeddings.LayerNorm.weight`` is listed there as ``embeddings.LayerNorm``)."""
    candidate = strip_wrappers(name)
    while candidate:
        found = table.get_name(candidate, try_suffixes=(".weight", ".bias"))
        if found:
            return found
        if "." not in candidate:
            return None
        candidate = candidate.split(".", 1)[1]
    return None
