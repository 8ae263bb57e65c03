"""Pair every tensor of model A with its counterpart in model B, across formats.

The same weights carry different names in different files: a DataParallel checkpoint adds
``module.``, ``torch.compile`` adds ``_orig_mod.``, a wrapper adds ``model.``, GGUF renames
``model.layers.0.mlp.up_proj.weight`` to ``blk.0.ffn_up.weight``, and ONNX exporters replace
names by ``onnx::MatMul_<N>`` / ``val_<N>`` and store Linear weights transposed.  The matchers
run in this order, each on what the previous ones left unpaired:

1. ``exact``: the same name on both sides.
2. ``gguf``: HF names mapped to GGUF names (the converter's llama table, else the gguf
   package's own ``gguf.get_tensor_name_map`` for the file's architecture).
3. ``prefix``: equal after dropping wrapper prefixes (``module.``, ``_orig_mod.``) or after
   dropping a leading dotted prefix that only one side has (``model.``, ``bert.``), when the
   element counts agree.
4. ``value`` / ``value-transposed``: by content: a hash of the bytes (floats as float32 so a
   bfloat16 tensor finds its float32 copy), and for 2-D tensors of its transpose.  This
   reads tensor data (one tensor at a time), so it runs only on what names could not pair.

Shapes are compared in keishiki's row-major convention (format readers already undo GGUF's
reversed dims); ``transform`` says how B's array must be changed to line up with A's.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from .core.model import ModelInfo
from .core.tensor import TensorInfo

# prefixes that wrappers add and that never mean a different tensor
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
FLOAT_FOR_HASH = {"float16", "bfloat16", "float32"}  # exactly representable as float32
GGML_QUANT = re.compile(r"^(q\d|iq\d|tq\d)")
LLAMA_ROPE = {"attn_q", "attn_k"}  # llama.cpp permutes these rows for its rotary layout


@dataclass
class TensorPair:
    """One tensor of A and its counterpart in B.

    Attributes:
        a, b: the names on each side.
        how: ``exact`` | ``prefix`` | ``gguf`` | ``value`` | ``value-transposed``.
        a_shape, b_shape, a_dtype, b_dtype: as the readers report them.
        transform: what to apply to B's array to line it up with A's: None, ``"transpose"``
            (ONNX MatMul weights), ``"llama-rope-permute"`` / ``"llama-rope-unpermute"``
            (llama.cpp's Q/K row permutation for its rotary layout, applied to or undone on
            B; the compare also tries the array as is, since not every writer permutes).
        extra: transform parameters (``n_head``) and notes (``shared``: B's tensor is
            also paired with another A tensor, as tied weights are).
    """

    a: str
    b: str
    how: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    a_dtype: str
    b_dtype: str
    transform: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transposed(self) -> bool:
        return self.transform == "transpose"

    def to_dict(self) -> dict[str, Any]:
        out = {"a": self.a, "b": self.b, "how": self.how, "transposed": self.transposed,
               "a_shape": list(self.a_shape), "b_shape": list(self.b_shape),
               "a_dtype": self.a_dtype, "b_dtype": self.b_dtype}
        if self.transform and not self.transposed:
            out["transform"] = self.transform
        out.update(self.extra)
        return out


@dataclass
class NameMap:
    """The result of :func:`map_names`: pairs in A's order plus what stayed unpaired."""

    a_path: str
    b_path: str
    a_format: str
    b_format: str
    pairs: list[TensorPair]
    unmatched_a: list[TensorInfo]
    unmatched_b: list[TensorInfo]

    @property
    def counted_unmatched(self) -> tuple[list[str], list[str]]:
        """Unpaired names that count as a difference (graph constants and computed buffers
        excluded)."""
        return ([t.name for t in self.unmatched_a if not is_uncounted(t, self.a_format)],
                [t.name for t in self.unmatched_b if not is_uncounted(t, self.b_format)])

    def how_counts(self) -> dict[str, int]:
        return dict(Counter(p.how for p in self.pairs).most_common())

    def to_dict(self) -> dict[str, Any]:
        ua, ub = self.counted_unmatched
        return {
            "a": {"path": self.a_path, "format": self.a_format},
            "b": {"path": self.b_path, "format": self.b_format},
            "n_pairs": len(self.pairs), "how": self.how_counts(),
            "pairs": [p.to_dict() for p in self.pairs],
            "unmatched_a": [_brief(t, self.a_format) for t in self.unmatched_a],
            "unmatched_b": [_brief(t, self.b_format) for t in self.unmatched_b],
            "n_unmatched_counted": len(ua) + len(ub),
        }


def _brief(t: TensorInfo, fmt: str) -> dict[str, Any]:
    out = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
    reason = uncounted_reason(t, fmt)
    if reason:
        out["not_counted"] = reason
    return out


# buffers a model recomputes at load time (transformers registers them non-persistent, so a
# state_dict has none, while TorchScript archives and ONNX graphs carry them)
COMPUTED_BUFFERS = re.compile(r"(^|\.)(rotary_emb\.(original_)?inv_freq|embeddings\.position_ids"
                              r"|attn\.masked_bias)$")


def uncounted_reason(t: TensorInfo, fmt: str) -> str | None:
    """Why an unpaired tensor does not count as a difference, or None when it does.

    ``"graph constant"``: ONNX tensors that are graph plumbing, not weights: integer/bool
    tensors (shapes, axes), scalars, and Constant-node values (a PyTorch model computes
    them; a Constant that holds a weight is paired by value first).  ``"computed buffer"``:
    rotary ``inv_freq``, BERT ``position_ids`` and the like, in any format."""
    if COMPUTED_BUFFERS.search(t.name):
        return "computed buffer"
    if fmt == "onnx" and (not t.dtype.startswith(("float", "bfloat")) or t.numel <= 1
                          or t.extra.get("source") == "constant"):
        return "graph constant"
    return None


def is_uncounted(t: TensorInfo, fmt: str) -> bool:
    """True when an unpaired ``t`` is listed but not counted (see :func:`uncounted_reason`)."""
    return uncounted_reason(t, fmt) is not None


# ---- public entry point ------------------------------------------------------------------------

def map_names(a: ModelInfo, b: ModelInfo, by_value: bool = True,
              on_load: Callable[[str], None] | None = None) -> NameMap:
    """Pair the tensors of ``a`` with those of ``b`` (see the module doc for the matchers).

    Args:
        a, b: models from :func:`keishiki.inspect` (any formats).
        by_value: also pair what names cannot, by hashing tensor contents (reads data,
            one tensor at a time; skipped for a side whose format cannot load data).
        on_load: called with each tensor name whose data is read for hashing (progress).

    Returns:
        A :class:`NameMap`; pairs are listed in A's tensor order.
    """
    left = {t.name: t for t in a.tensors}
    right = {t.name: t for t in b.tensors}
    pairs: list[TensorPair] = []

    stored_transposed = _declared_transposed(a), _declared_transposed(b)

    def add(a_name: str, b_name: str, how: str, transform: str | None = None, **extra) -> None:
        ta, tb = left.pop(a_name), right.pop(b_name)
        if transform is None and len(ta.shape) == 2 and tb.shape == ta.shape[::-1] and (
                ta.shape[0] != ta.shape[1] or a_name in stored_transposed[0]
                or b_name in stored_transposed[1]):
            # named after the parameter but stored as the MatMul operand (keishiki's ONNX
            # export records these in its metadata; a non-square shape says so by itself)
            transform = "transpose"
        pairs.append(TensorPair(ta.name, tb.name, how, ta.shape, tb.shape, ta.dtype, tb.dtype,
                                transform, dict(extra)))

    for name in [n for n in left if n in right]:
        add(name, name, "exact")
    # GGUF names before prefixes, so that a dropped prefix never pairs an HF name with a
    # GGUF name that merely looks like its tail
    for a_name, b_name, transform, extra in _gguf_pairs(a, b, left, right):
        add(a_name, b_name, "gguf", transform, **extra)
    for a_name, b_name in _prefix_pairs(left, right):
        add(a_name, b_name, "prefix")
    if by_value and left and (right or pairs) and a.tensor_loader and b.tensor_loader:
        _value_pairs(a, b, left, right, pairs, on_load)

    order = {t.name: i for i, t in enumerate(a.tensors)}
    pairs.sort(key=lambda p: order[p.a])
    return NameMap(str(a.path), str(b.path), a.format, b.format, pairs,
                   list(left.values()), list(right.values()))


def _declared_transposed(info: ModelInfo) -> set[str]:
    """Initializers an ONNX file declares as stored transposed (metadata key written by
    :func:`keishiki.convert.names.rename_initializers`)."""
    from .convert.names import TRANSPOSED_KEY

    raw = (info.metadata or {}).get(TRANSPOSED_KEY)
    try:
        return set(json.loads(raw)) if raw else set()
    except (TypeError, ValueError):
        return set()


# ---- prefix ------------------------------------------------------------------------------------

def strip_wrappers(name: str) -> str:
    """``module._orig_mod.fc.weight`` -> ``fc.weight`` (wrapper prefixes, repeatedly)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _prefix_pairs(left: dict[str, TensorInfo],
                  right: dict[str, TensorInfo]) -> list[tuple[str, str]]:
    """Pairs equal after dropping wrapper prefixes, then after dropping one dotted prefix
    that only one side has (the most common such prefix first, so ``model.`` wins over a
    coincidence)."""
    out: list[tuple[str, str]] = []
    canon_right: dict[str, str] = {}
    for name in right:
        canon_right.setdefault(strip_wrappers(name), name)
    used_b: set[str] = set()
    canon_left: dict[str, str] = {}
    for name in left:
        canon = strip_wrappers(name)
        b_name = canon_right.get(canon)
        if b_name is not None and b_name not in used_b and (canon != name or b_name != canon):
            out.append((name, b_name))
            used_b.add(b_name)
        else:
            canon_left.setdefault(canon, name)
    used_a = {a for a, _ in out}
    canon_left = {c: n for c, n in canon_left.items() if n not in used_a}
    canon_right = {c: n for c, n in canon_right.items() if n not in used_b}

    # one side carries an extra leading prefix: count each candidate prefix, apply by count
    candidates: Counter = Counter()
    for side, names, other in (("b", canon_right, canon_left), ("a", canon_left, canon_right)):
        for canon in names:
            for prefix, rest in _dotted_splits(canon):
                if rest in other:
                    candidates[(side, prefix)] += 1
    for (side, prefix), _count in candidates.most_common():
        longer, shorter = (canon_right, canon_left) if side == "b" else (canon_left, canon_right)
        for canon in [c for c in longer if c.startswith(prefix)]:
            rest = canon[len(prefix):]
            if rest not in shorter or canon not in longer:
                continue
            a_name, b_name = ((shorter[rest], longer[canon]) if side == "b"
                              else (longer[canon], shorter[rest]))
            if left[a_name].numel != right[b_name].numel:
                continue
            out.append((a_name, b_name))
            del longer[canon], shorter[rest]
    return out


def _dotted_splits(name: str) -> Iterable[tuple[str, str]]:
    """``a.b.c`` -> (``a.``, ``b.c``), (``a.b.``, ``c``)."""
    idx = name.find(".")
    while idx != -1:
        yield name[:idx + 1], name[idx + 1:]
        idx = name.find(".", idx + 1)


# ---- gguf --------------------------------------------------------------------------------------

def _gguf_pairs(a: ModelInfo, b: ModelInfo, left: dict[str, TensorInfo],
                right: dict[str, TensorInfo]) -> list[tuple[str, str, str | None, dict]]:
    """HF ↔ GGUF pairs by the gguf package's name table for the GGUF file's architecture."""
    if (a.format == "gguf") == (b.format == "gguf"):
        return []
    gguf_side, gguf_names, other_names = (a, left, right) if a.format == "gguf" else (b, right, left)
    arch = gguf_architecture(gguf_side)
    table = _gguf_table(arch, gguf_names)
    if table is None and arch != "llama":
        return []
    heads = _gguf_heads(gguf_side, arch)
    out = []
    taken: set[str] = set()
    for name in other_names:
        target = _hf_to_gguf(table, name)
        if target is None or target not in gguf_names or target in taken:
            continue
        taken.add(target)
        transform, extra = None, {}
        kind = target.split(".")[-2] if target.count(".") >= 2 else ""
        if arch == "llama" and kind in LLAMA_ROPE and heads:
            # B's array lines up with A's after (un)doing llama.cpp's permutation
            transform = "llama-rope-unpermute" if b is gguf_side else "llama-rope-permute"
            extra = {"n_head": heads[0] if kind == "attn_q" else heads[1]}
        a_name, b_name = (target, name) if a.format == "gguf" else (name, target)
        out.append((a_name, b_name, transform, extra))
    return out


def gguf_architecture(info: ModelInfo) -> str | None:
    """``general.architecture`` of a GGUF ModelInfo (from its ``gguf`` facts or metadata)."""
    facts = info.gguf or {}
    arch = facts.get("architecture")
    if not arch:
        kv = facts.get("kv") or info.metadata or {}
        arch = kv.get("general.architecture")
        if isinstance(arch, dict):  # a reader that records {"type":..., "value":...}
            arch = arch.get("value")
    return str(arch) if arch else None


def _gguf_kv(info: ModelInfo, key: str) -> Any:
    for source in ((info.gguf or {}).get("kv") or {}, info.metadata or {}):
        if key in source:
            value = source[key]
            return value.get("value") if isinstance(value, dict) else value
    return None


def _gguf_heads(info: ModelInfo, arch: str | None) -> tuple[int, int] | None:
    n_head = _gguf_kv(info, f"{arch}.attention.head_count")
    n_kv = _gguf_kv(info, f"{arch}.attention.head_count_kv") or n_head
    try:
        return (int(n_head), int(n_kv)) if n_head else None
    except (TypeError, ValueError):
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
    blocks = [int(m.group(1)) for n in gguf_names if (m := re.match(r"blk\.(\d+)\.", n))]
    return gguf.get_tensor_name_map(arch_enum, max(blocks, default=-1) + 1)


def _hf_to_gguf(table, name: str) -> str | None:
    """The GGUF name of HF tensor ``name``: the converter's llama table first (the names
    ``keishiki convert`` writes), then the gguf package's table, trying the name without
    leading dotted components too (``bert.embeddings.LayerNorm.weight`` is listed there as
    ``embeddings.LayerNorm``)."""
    candidate = strip_wrappers(name)
    from .convert.gguf_names import hf_to_gguf_name

    found = hf_to_gguf_name(candidate)
    if found or table is None:
        return found
    while candidate:
        found = table.get_name(candidate, try_suffixes=(".weight", ".bias"))
        if found:
            return found
        if "." not in candidate:
            return None
        candidate = candidate.split(".", 1)[1]
    return None


# ---- values ------------------------------------------------------------------------------------

def load_array(model: ModelInfo, info: TensorInfo) -> np.ndarray:
    """Tensor ``info`` of ``model`` as a numpy array of ``info.shape``; GGML block-quantized
    types are dequantized to float32 with the gguf package."""
    if model.tensor_loader is None:
        from .errors import InvalidRequest

        raise InvalidRequest(f"{model.path}: keishiki cannot read tensor data from "
                             f"{model.format} files")
    arr = model.tensor_loader(info)
    if GGML_QUANT.match(info.dtype):
        arr = _dequantize(arr, info)
    return arr


def _dequantize(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    from ._optional import require

    gguf = require("gguf", extra="gguf", purpose=f"dequantize {info.dtype} tensors")
    qtype = gguf.GGMLQuantizationType[info.dtype.upper()]
    rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    return gguf.quants.dequantize(data, qtype).reshape(info.shape)


def content_digest(arr: np.ndarray) -> tuple:
    """Hash of an array's values: floats exactly representable as float32 are hashed as
    float32 (a bfloat16 tensor and its float32 copy hash alike); others by dtype + bytes."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name in FLOAT_FOR_HASH:
        arr, name = arr.astype(np.float32), "float"
    data = np.ascontiguousarray(arr).tobytes()
    return (name, tuple(arr.shape), hashlib.blake2b(data, digest_size=16).digest())


def _hashable(info: TensorInfo) -> bool:
    # a 1-element tensor (a step counter, a scale) would pair with any equal scalar constant
    return not GGML_QUANT.match(info.dtype) and info.numel > 1


def _digest_table(model: ModelInfo, infos: Iterable[TensorInfo], numels: set[int],
                  on_load: Callable[[str], None] | None) -> dict[tuple, list]:
    """{content digest: [(name, None | "transpose")]} of ``infos`` whose size is in
    ``numels`` (2-D tensors also under their transpose's digest)."""
    table: dict[tuple, list[tuple[str, str | None]]] = defaultdict(list)
    for t in infos:
        if not _hashable(t) or t.numel not in numels:
            continue
        if on_load:
            on_load(t.name)
        arr = load_array(model, t)
        table[content_digest(arr)].append((t.name, None))
        if arr.ndim == 2:
            table[content_digest(arr.T)].append((t.name, "transpose"))
        del arr
    return table


_NAME_SPLIT = re.compile(r"[./:_\-]+")
# leaf names other frameworks give a PyTorch ``weight`` / ``bias`` (Flax, Keras, TF)
_LEAF_ALIASES = {"kernel": "weight", "scale": "weight", "embedding": "weight",
                 "embeddings": "weight", "gamma": "weight", "beta": "bias", "0": ""}


def _name_tokens(name: str) -> list[str]:
    parts = [_LEAF_ALIASES.get(p, p) for p in _NAME_SPLIT.split(name.lower())]
    return [p for p in parts if p]


def name_similarity(a: str, b: str) -> float:
    """How alike two tensor names are across naming styles: the length of their common
    tail of tokens (``encoder.layer.0.output.dense.bias`` vs
    ``encoder/layer/0/output/dense/bias`` share all six), plus a little for shared tokens."""
    ta, tb = _name_tokens(a), _name_tokens(b)
    tail = 0
    while tail < min(len(ta), len(tb)) and ta[-1 - tail] == tb[-1 - tail]:
        tail += 1
    return tail + 0.01 * len(set(ta) & set(tb))


def _rank_candidates(name: str, candidates: list) -> list[tuple[tuple, float]]:
    """Candidates best first: untransposed before transposed, then by name similarity."""
    scored = [(c, name_similarity(name, c[0])) for c in candidates]
    scored.sort(key=lambda cs: (cs[0][1] is not None, -cs[1]))
    return scored


def _value_pair(ta: TensorInfo, tb: TensorInfo, transform: str | None,
                extra: dict) -> TensorPair:
    return TensorPair(ta.name, tb.name, "value-transposed" if transform else "value",
                      ta.shape, tb.shape, ta.dtype, tb.dtype, transform, extra)


def _value_pairs(a: ModelInfo, b: ModelInfo, left: dict[str, TensorInfo],
                 right: dict[str, TensorInfo], pairs: list[TensorPair],
                 on_load: Callable[[str], None] | None) -> None:
    """Pair what is left by content.  Several tensors of A may share one tensor of B: tied
    weights stored once, or equal tensors (all-ones norms) an exporter merged into one."""
    right_numels = {t.numel for t in right.values() if _hashable(t)}
    left_numels = {t.numel for t in left.values() if _hashable(t)}
    table = _digest_table(b, list(right.values()), left_numels, on_load)
    # sizes a tensor of A can match: B's unpaired tensors, or (shared) B's paired ones
    wanted = right_numels | {math.prod(p.b_shape) for p in pairs}
    leftovers: list[tuple[TensorInfo, tuple]] = []
    for t in list(left.values()):
        if not _hashable(t) or t.numel not in wanted:
            continue
        if on_load:
            on_load(t.name)
        digest = content_digest(load_array(a, t))
        candidates = table.get(digest, [])
        free = _rank_candidates(t.name, [c for c in candidates if c[0] in right])
        if free:
            (b_name, transform), score = free[0]
            # equal tensors (zero biases, unit norms) tie on value: the names decide
            ambiguous = len(free) > 1 and free[1][1] == score
            pair = _value_pair(t, right.pop(b_name), transform,
                               {"ambiguous": True} if ambiguous else {})
        elif candidates:  # B's tensor was paired by value already: shared
            b_name, transform = candidates[0]
            pair = _value_pair(t, b.tensor(b_name), transform, {"shared": True})
        else:
            leftovers.append((t, digest))
            continue
        del left[t.name]
        pairs.append(pair)
    if not leftovers:
        return
    # B's tensors paired by name may hold what the leftovers hold as well
    named = {p.b: b.tensor(p.b) for p in pairs if not p.how.startswith("value")}
    table = _digest_table(b, named.values(), {t.numel for t, _ in leftovers}, on_load)
    for t, digest in leftovers:
        candidates = sorted(table.get(digest, []), key=lambda c: c[1] is not None)
        if candidates:
            b_name, transform = candidates[0]
            del left[t.name]
            pairs.append(_value_pair(t, named[b_name], transform, {"shared": True}))
