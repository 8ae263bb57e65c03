"""GGUF edges: gguf → safetensors / hf-model (dequantized, names mapped back, llama's Q/K
un-permuted, gemma's norm offset undone), hf-model (llama, mistral, qwen2, qwen3, gemma,
gemma2: see :mod:`.gguf_archs`) → gguf and safetensors → gguf at f32/f16/bf16/q8_0 and
llama.cpp's quantization types and k-quant mixes (:mod:`.gguf_quant`).

GGUF stores dims reversed (``ne[0]`` is the fastest-moving one); the ``gguf`` package's
reader and writer take row-major numpy shapes, so shapes here are always row-major.
Everything goes through the ``gguf`` package (the reference implementation): reading with
``GGUFReader`` (memory-mapped), dequantizing with ``gguf.quants.dequantize``, writing with
``GGUFWriter`` in its streaming mode (tensor infos first, then data one tensor at a time).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import types
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import dtypes
from ..core.atomic import WRITEBACK_CHUNK, start_writeback
from ..core.progress import progress
from ..core.tensor import LazyTensor, TensorInfo
from ..errors import CorruptFile, InvalidRequest, MissingDependency
from ..formats.gguf import PLAIN_DTYPES
from . import gguf_archs as archs
from . import gguf_names as names
from . import gguf_quant as quants
from .base import ConvertOptions, StepReport, Timer
from .verify import ReadBack
from .weights import (
    FLOATING,
    SourceTensors,
    cast_array,
    source_tensors,
    verify_safetensors,
    write_safetensors,
)

_KEEP = PLAIN_DTYPES  # GGML types kept as they are, by their numpy names
GGUF_MAX_NAME = 63


def _gguf():
    from .._optional import require

    return require("gguf", extra="gguf", purpose="read or write GGUF")


# ---- reading GGUF -------------------------------------------------------------------------


def read_kv(reader) -> dict[str, Any]:
    """Every metadata field as a Python value (arrays as lists), ``split.*`` keys left out
    (they describe one file of a split model, not the model)."""
    from ..formats.gguf_split import SPLIT_KEYS

    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in SPLIT_KEYS:
            continue
        try:
            out[key] = field.contents()
        except Exception:  # an exotic nested array: not needed for conversion
            continue
    return out


def open_readers(path: Path) -> list:
    """gguf-py's reader (:func:`reference_reader`) of every file of the GGUF model at ``path``
    (a file, any split of a split model, or a folder holding one model), in split order: the
    first holds the metadata.

    Raises:
        CorruptFile: a file is truncated or malformed (GGUFReader's own ValueError/IndexError
            would otherwise surface as an internal error); keishiki's GGUF reader names the
            first bad byte when it can.
        InvalidRequest: a split is missing (named), or a folder holds no or several models.
    """
    from ..formats.gguf_split import model_paths
    from ..inspecting import inspect

    # keishiki's own reader first: it bounds array lengths, nesting and string sizes, where
    # GGUFReader builds a numpy view per element of whatever length the file claims
    # (a crafted array length grew past 1.5 GB for minutes); it names the bad offset, and
    # it checks a split model's every split (present, named and numbered alike)
    inspect(path)
    readers = []
    for file in model_paths(path):
        try:
            readers.append(reference_reader(file))
        except (ValueError, IndexError, KeyError, OSError, TypeError) as exc:
            raise CorruptFile(file, f"gguf cannot read it ({exc})") from exc
    return readers


@functools.cache
def _plain_view_reader() -> type:
    gguf = _gguf()
    vt = gguf.GGUFValueType

    class PlainViewReader(gguf.GGUFReader):
        """GGUFReader whose ``data`` is a plain ndarray view of its ``np.memmap``, and whose
        arrays of scalars or strings are parsed in one loop each (the same parts)."""

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped) -> None:
            self._mapped = mapped  # keeps the map open as long as the reader
            self._plain = mapped.view(np.ndarray)

        def _get_field_parts(self, orig_offs: int, raw_type: int):
            # GGUFReader parses an array by calling itself once per element (an enum, dtype
            # lookups, two slices each): 0.4 s for a 32000-token vocabulary and its scores
            # and types, 0.05 s here.  The parts made here are the same views of the same
            # bytes with the same dtypes (tests/convert/test_verify_cost.py compares them);
            # nested arrays and anything that runs past the end go to gguf-py's own code.
            parsed = self._flat_array(orig_offs) if raw_type == vt.ARRAY else None
            if parsed is None:
                return super()._get_field_parts(orig_offs, raw_type)
            return parsed

        def _flat_array(self, orig_offs: int):
            data = self.data
            head = orig_offs + 12
            if head > len(data):
                return None
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            count = int(alen[0])
            try:
                itype = vt(int(raw_itype[0]))
            except ValueError:
                return None
            native = self.byte_order == "I"  # else byte-swapped: "S"
            order = sys.byteorder if native else ("big" if sys.byteorder == "little" else "little")
            types = [vt.ARRAY, itype] if count else [vt.ARRAY]  # (as gguf-py: from element 0)
            parts: list = [raw_itype, alen]
            scalar = self.gguf_scalar_to_np.get(itype)
            if scalar is not None:
                dtype = np.dtype(scalar).newbyteorder(self.byte_order)
                end = head + dtype.itemsize * count
                if end > len(data):
                    return None
                whole = data[head:end].view(dtype)
                parts += [whole[i : i + 1] for i in range(count)]
                return end - orig_offs, parts, list(range(2, 2 + count)), types
            if itype != vt.STRING:
                return None
            u64 = np.dtype(np.uint64).newbyteorder(self.byte_order)
            raw, pos, size, idxs = memoryview(data), head, len(data), []
            for _ in range(count):
                if pos + 8 > size:
                    return None
                length = int.from_bytes(raw[pos : pos + 8], order)
                if pos + 8 + length > size:
                    return None
                parts.append(data[pos : pos + 8].view(u64))
                parts.append(data[pos + 8 : pos + 8 + length])
                idxs.append(len(parts) - 1)
                pos += 8 + length
            return pos - orig_offs, parts, idxs, types

    return PlainViewReader


def reference_reader(path: Path):
    """``gguf.GGUFReader`` of ``path`` (the reference reader verification reads back with),
    its parsing unchanged but over a plain ndarray view of the file's memory map.

    Why: GGUFReader slices its ``np.memmap`` once per value it parses, and every slice of a
    memmap runs memmap's Python ``__array_finalize__``: 1.2 of the 1.6 s it takes to open a
    GGUF with a 32000-token vocabulary.  Slices of a plain view of the same map are the
    same bytes, made in a quarter of the time (0.4 s); its arrays, parsed in one loop each
    instead of a call per element, take 0.05 s.
    """
    return _plain_view_reader()(str(path))


def metadata_reader(path: Path):
    """:func:`reference_reader` of a GGUF whose tensor data may not be written yet: the
    header, metadata and tensor infos parsed as gguf-py parses them; ``tensors`` hold the
    names alone, and ``metadata_end`` is where the tensor infos end (the bytes read)."""
    base = _plain_view_reader()

    class MetadataReader(base):  # type: ignore[misc, valid-type]
        def _build_tensor_info(self, offs: int, count: int):
            offs, fields = super()._build_tensor_info(offs, count)
            self.metadata_end = offs
            return offs, fields

        def _build_tensors(self, start_offs: int, fields) -> None:
            self.tensors = [
                types.SimpleNamespace(name=str(bytes(f.parts[1]), encoding="utf-8")) for f in fields
            ]

    return MetadataReader(str(path))


def _check_heads(
    src: Path,
    arch: archs.GGUFArch,
    config: dict[str, Any],
    st: SourceTensors,
    n_head: int,
    n_head_kv: int,
) -> None:
    """Refuse weights that lack a tensor the model needs, or a config whose head counts
    disagree with the attention weights' shapes.

    Why: a config.json without ``num_key_value_heads`` defaults to ``num_attention_heads``
    (as transformers does); for a GQA checkpoint the GGUF would then carry the wrong
    ``head_count_kv`` and llama.cpp refuses to load it, while the read-back passes.

    Raises:
        InvalidRequest: a needed tensor is missing; the q_proj/k_proj rows are not
            heads x head_dim.
    """
    by_name = {t.info.name: t.info for t in st.tensors}
    absent = [
        name
        for name in archs.needed_tensors(arch, int(config["num_hidden_layers"]))
        if name not in by_name
    ]
    if absent:  # llama.cpp would refuse the GGUF ("missing tensor"); the read-back cannot see it
        raise InvalidRequest(
            f"{src}: {len(absent)} tensor(s) a {arch.name} model needs are "
            f"missing ({', '.join(absent[:3])}); check the weight files"
        )
    head_dim = int(archs.config_value(config, "head_dim"))
    for proj, key, heads in (
        ("q_proj", "num_attention_heads", n_head),
        ("k_proj", "num_key_value_heads", n_head_kv),
    ):
        info = by_name.get(f"model.layers.0.self_attn.{proj}.weight")
        if info is None or not info.shape or info.shape[0] == heads * head_dim:
            continue
        given = "" if config.get(key) is not None else " (absent: defaults to num_attention_heads)"
        raise InvalidRequest(
            f"{src}: config.json's {key} {heads}{given} x head_dim {head_dim} != "
            f"{info.shape[0]} rows of {info.name}; set {key} to "
            f"{info.shape[0] // head_dim if head_dim else '?'} in config.json"
        )
    fused = by_name.get("model.layers.0.self_attn.qkv_proj.weight")  # phi3: q, k, v stacked
    if fused is not None and fused.shape and fused.shape[0] != (n_head + 2 * n_head_kv) * head_dim:
        kv_rows = (fused.shape[0] - n_head * head_dim) // 2
        raise InvalidRequest(
            f"{src}: config.json's heads ({n_head} + 2 x {n_head_kv} KV) x head_dim {head_dim} "
            f"!= {fused.shape[0]} rows of {fused.name}; set num_key_value_heads to "
            f"{kv_rows // head_dim if head_dim else '?'} in config.json"
        )


def gguf_tensors(path: Path, dtype: str | None) -> tuple[SourceTensors, dict[str, Any]]:
    """The GGUF file's tensors as LazyTensors with row-major shapes; for an architecture in
    :data:`.gguf_archs.ARCHS`, with HF names, Q/K un-permuted and norm offsets undone.

    Quantized tensors load dequantized to float32 (or ``dtype``); F32/F16/BF16 keep their type.
    """
    _gguf()  # a missing gguf is one MissingDependency line, before any reading
    readers = open_readers(path)
    kv = read_kv(readers[0])  # the first split holds the model's metadata
    reader_tensors = [t for reader in readers for t in reader.tensors]
    arch = archs.for_gguf(kv)
    back: dict[str, str] = {}
    n_head = n_head_kv = 0
    tensors, warnings = [], []
    if arch:
        _, back = arch.name_maps(int(kv.get(f"{arch.name}.block_count", 0) or 0))
        n_head = int(kv.get(f"{arch.name}.attention.head_count", 0) or 0)
        inferred = _kv_heads_from_tensors(reader_tensors, kv, arch.name, n_head)
        if inferred is not None:
            kv[f"{arch.name}.attention.head_count_kv"] = inferred
            warnings.append(
                f"{arch.name}.attention.head_count_kv is absent: {inferred} KV "
                f"heads, read from blk.0.attn_k.weight's rows"
            )
        n_head_kv = int(kv.get(f"{arch.name}.attention.head_count_kv", n_head) or n_head)
    for t in reader_tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        type_name = t.tensor_type.name
        dtype_name = _KEEP.get(type_name, "float32")
        hf_name = back.get(t.name) if arch else None
        if arch and hf_name is None:
            warnings.append(f"{t.name}: no Hugging Face name known; kept as is")
        heads = names.rotary_heads(t.name, n_head, n_head_kv) if arch and arch.permute_qk else None
        offset = arch.offset_of(hf_name) if arch and hf_name else 0.0

        def load(t=t, shape=shape, heads=heads, type_name=type_name, offset=offset) -> np.ndarray:
            if type_name in _KEEP:
                arr = np.asarray(t.data)
                if type_name == "BF16":
                    arr = arr.reshape(-1).view(np.uint16).view(dtypes.to_numpy("bfloat16"))
                arr = arr.reshape(shape)
            else:
                arr = quants.dequantize(np.asarray(t.data), t.tensor_type, shape)
            if offset:  # gemma: llama.cpp stored w + 1 (its RMSNorm multiplies by w alone)
                arr = cast_array(
                    cast_array(arr, "float32") - np.float32(offset), dtypes.from_numpy(arr.dtype)
                )
            return names.unpermute(arr, heads) if heads else np.ascontiguousarray(arr)

        size = (
            int(np.prod(shape)) * dtypes.itemsize(dtype_name)
            if shape
            else dtypes.itemsize(dtype_name)
        )
        info = TensorInfo(
            hf_name or t.name,
            dtype_name,
            shape,
            size,
            extra={"gguf_name": t.name, "ggml_type": type_name},
        )
        tensors.append(LazyTensor(info, load))
    return SourceTensors(tensors, warnings=warnings, format="gguf"), kv


def _kv_heads_from_tensors(tensors: list, kv: dict[str, Any], arch: str, n_head: int) -> int | None:
    """KV heads of a GGUF whose metadata omits ``head_count_kv`` (old files, where llama.cpp
    defaults it to ``head_count``), from ``blk.0.attn_k.weight``'s rows / head size; None
    when the key is there or the tensors cannot say.  Why: with fewer KV heads than query
    heads, the default un-permutes K wrongly and gives a config transformers cannot load."""
    if f"{arch}.attention.head_count_kv" in kv or not n_head:
        return None
    head_dim = kv.get(f"{arch}.attention.key_length") or (
        int(kv.get(f"{arch}.embedding_length", 0) or 0) // n_head
    )
    k = next((t for t in tensors if t.name == "blk.0.attn_k.weight"), None)
    if k is None or not head_dim:
        return None
    rows = int(k.shape.tolist()[-1])  # GGUF lists dims reversed: the last is the rows
    heads, rest = divmod(rows, int(head_dim))
    return heads if heads and not rest and heads != n_head else None


def gguf_to_safetensors(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``gguf -> safetensors``: dequantized tensors, known architectures' names mapped
    back to HF (others keep their GGUF names).

    Raises:
        InvalidRequest: a vocabulary-only GGUF (no tensors to write).
    """
    st, kv = gguf_tensors(src, opts.dtype)
    if not st.tensors:  # llama.cpp's --vocab-only files: an empty safetensors helps nobody
        raise InvalidRequest(f"{src}: a vocabulary-only GGUF (no tensors): nothing to write")
    report = StepReport(
        edge="gguf -> safetensors", src=str(src), out=str(out), warnings=st.warnings
    )
    with (
        Timer() as timer,
        progress(st.nbytes, "-> safetensors", opts.quiet, unit_bytes=True) as adv,
    ):
        report.bytes_written = write_safetensors(out, st, opts, adv)
    if opts.verify:
        with (
            Timer() as verify_timer,
            progress(st.nbytes, "verifying", opts.quiet, unit_bytes=True) as adv,
        ):
            report.verify = verify_safetensors(out, st, opts.dtype, advance=adv)
        timer.seconds += verify_timer.seconds
    report.n_tensors = len(st.tensors)
    report.details["architecture"] = kv.get("general.architecture")
    report.details["ggml_types"] = sorted({t.info.extra["ggml_type"] for t in st.tensors})
    report.seconds = timer.seconds
    return report


def _check_complete(src: Path, arch: archs.GGUFArch, kv: dict[str, Any], st: SourceTensors) -> None:
    """Refuse a GGUF that lacks metadata llama.cpp requires or a tensor the HF model needs.

    Why: config.json is built from those keys (a missing one was a KeyError), and a missing
    weight would be silently random-initialised by transformers.

    Raises:
        InvalidRequest: the GGUF holds no tensors at all (a vocabulary-only file).
        CorruptFile: the first few missing keys or tensors, named.
    """
    # keys config_from_metadata has a fallback for (transformers' and llama.cpp's defaults)
    # may be absent: old GGUFs omit head_count_kv
    defaulted = {"num_key_value_heads", *archs.DEFAULTS}
    missing = [
        f"{arch.name}.{k.gguf}"
        for k in arch.keys
        if k.required
        and not k.only_if_in_config
        and k.hf not in defaulted
        and f"{arch.name}.{k.gguf}" not in kv
    ]
    if missing:
        raise CorruptFile(
            src,
            f"GGUF metadata has no {', '.join(missing[:3])}, which llama.cpp "
            f"requires for {arch.name}; use to=safetensors for the tensors",
        )
    if not st.tensors:  # llama.cpp's --vocab-only files: a tokenizer, no model
        raise InvalidRequest(
            f"{src}: a vocabulary-only GGUF (no tensors): there is no model to make an HF folder of"
        )
    present = {t.name for t in st.tensors}
    n_blocks = int(kv[f"{arch.name}.block_count"])
    absent = [name for name in archs.needed_tensors(arch, n_blocks) if name not in present]
    if absent:
        raise CorruptFile(
            src,
            f"{len(absent)} tensor(s) the {arch.name} model needs are "
            f"missing ({', '.join(absent[:3])}); use to=safetensors for "
            f"the tensors",
        )


def gguf_to_hf(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``gguf -> hf-model``: config.json from the ``<arch>.*`` metadata (llama, qwen2,
    qwen3, gemma, gemma2), model.safetensors and tokenizer.json/tokenizer_config.json (gpt2
    vocabularies rebuilt, llama/SentencePiece ones through transformers' GGUF loader), the
    tokenizer checked by encoding sample texts."""
    from .gguf_vocab import load_gguf_tokenizer, write_hf_tokenizer

    st, kv = gguf_tensors(src, opts.dtype)
    arch = archs.for_gguf(kv)
    if arch is None:
        raise InvalidRequest(
            f"{src}: GGUF architecture {kv.get('general.architecture')!r}: "
            f"keishiki makes HF folders of {', '.join(archs.ARCHS)} GGUF files "
            f"only; use to=safetensors to get the tensors"
        )
    _check_complete(src, arch, kv, st)
    if not out.is_dir():
        out.mkdir()
    report = gguf_to_safetensors(src, out / "model.safetensors", opts)
    report.edge, report.out = "gguf -> hf-model", str(out)
    embed = next(t for t in st.tensors if t.name == "model.embed_tokens.weight")
    tied = not any(t.name == "lm_head.weight" for t in st.tensors)
    written = {t.info.dtype for t in st.tensors if t.info.dtype in FLOATING}
    dtype = opts.dtype or ("float32" if "float32" in written or not written else sorted(written)[0])
    config = archs.config_from_metadata(arch, kv, embed.info.shape[0], tied, dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    from ..formats.gguf_split import model_paths

    first = model_paths(src)[0]  # the file holding the tokenizer: the first split
    try:
        files = write_hf_tokenizer(out, kv, first)
    except MissingDependency as exc:
        files = []
        report.warnings.append(f"tokenizer not converted: {exc}")
    except Exception as exc:  # transformers' loader refusing a vocabulary: the weights stand
        files = []
        report.warnings.append(f"tokenizer not converted: transformers could not load it ({exc})")
    if (
        not files
        and "tokenizer.ggml.tokens" in kv
        and not any(w.startswith("tokenizer not converted") for w in report.warnings)
    ):
        report.warnings.append(
            f"tokenizer not converted (tokenizer.ggml.model "
            f"{kv.get('tokenizer.ggml.model')!r}; gpt2 and llama are)"
        )
    if files and opts.verify and report.verify:
        check_tokenizer(
            report, lambda: load_gguf_tokenizer(first, kv), lambda: _auto_tokenizer(out)
        )
    report.details["files"] = ["config.json", "generation_config.json", "model.safetensors", *files]
    return report


# ---- writing GGUF -------------------------------------------------------------------------


@dataclass
class Planned:
    """One tensor to write: GGUF name, its source, the GGML type, rotary heads to permute,
    and what to add to it first (gemma's norm offset)."""

    gguf_name: str
    source: LazyTensor
    qtype: str  # F32 | F16 | BF16 | Q8_0, Q4_K ... (gguf_quant.QUANTIZED) | keep (integers)
    heads: int | None = None
    offset: float = 0.0
    digest: str | None = None  # digest of the bytes written (what the read-back compares)


def _pick_type(info: TensorInfo, quant: str, keep_float64: bool = False) -> str:
    """The GGML type of one tensor under ``quant``; ``keep_float64``: a float64 tensor stays
    F64 (a generic GGUF with no quantization asked: lossless; llama.cpp computes in F32 at
    most, so a model GGUF gets F32)."""
    if info.dtype not in FLOATING or (keep_float64 and info.dtype == "float64"):
        if info.dtype not in _KEEP_TYPE:  # (gguf's writer would fail half-way)
            raise InvalidRequest(
                f"{info.name}: GGUF has no type for {info.dtype} tensors (it holds F32, F16, "
                f"BF16, F64, I8, I16, I32, I64 and the quantized types)"
            )
        return "keep"
    if quant == "f32" or len(info.shape) < 2:
        return "F32"  # llama.cpp keeps 1-D tensors (norms, biases) in f32
    if quant == "q8_0":
        return "Q8_0" if info.shape[-1] % 32 == 0 else "F16"
    if quant in ("f16", "bf16"):
        return {"f16": "F16", "bf16": "BF16"}[quant]
    return "mix"  # a llama.cpp quantization mix: :func:`_apply_mix` picks the type by name


def _apply_mix(
    plan: list[Planned],
    quant: str,
    n_head: int = 0,
    n_head_kv: int = 0,
    n_layer: int = 0,
    generic: bool = False,
) -> None:
    """Give every ``mix`` tensor of ``plan`` its type under llama.cpp's rules for ``quant``
    (:func:`.gguf_quant.tensor_type`), in file order as llama.cpp counts layers; ``generic``
    (tensors under their own names): the mix's type for every 2-D tensor."""
    state = quants.MixState.for_names([p.gguf_name for p in plan], n_head, n_head_kv, n_layer)
    for p in plan:
        if p.qtype == "mix":
            p.qtype = quants.tensor_type(
                p.gguf_name, tuple(p.source.info.shape), quant, state, generic
            )


def _default_quant(st: SourceTensors, opts: ConvertOptions) -> str:
    if opts.quant:
        return opts.quant
    if opts.dtype:
        return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[opts.dtype]
    floating = {t.info.dtype for t in st.tensors if t.info.dtype in FLOATING}
    # lossless by default: keep a half-precision model in its half type, else f32
    return {frozenset({"float16"}): "f16", frozenset({"bfloat16"}): "bf16"}.get(
        frozenset(floating), "f32"
    )


def _encode(arr: np.ndarray, qtype: str, heads: int | None, offset: float = 0.0) -> np.ndarray:
    """The bytes GGUF stores for ``arr`` (``offset`` added in float32 and rows permuted first
    when asked)."""
    if offset:
        arr = cast_array(arr, "float32") + np.float32(offset)
    if heads:
        arr = names.permute(arr, heads)
    if qtype == "keep":
        return np.ascontiguousarray(arr)
    if qtype == "F32":
        return np.ascontiguousarray(cast_array(arr, "float32"))
    if qtype == "F16":
        return np.ascontiguousarray(cast_array(arr, "float16"))
    if qtype == "BF16":
        return np.ascontiguousarray(cast_array(arr, "bfloat16")).view(np.uint8)
    data = np.ascontiguousarray(cast_array(arr, "float32"))
    return quants.quantize(data, qtype)  # Q8_0 too: it handles empty tensors gguf-py cannot


def _encoded_size(info: TensorInfo, qtype: str) -> tuple[tuple[int, ...], Any, int, Any]:
    """(shape passed to add_tensor_info, numpy dtype, nbytes, raw GGML type or None)."""
    gguf = _gguf()
    numel = int(np.prod(info.shape)) if info.shape else 1
    if qtype == "keep":
        return info.shape, dtypes.to_numpy(info.dtype), info.nbytes, None
    if qtype in ("F32", "F16"):
        dt = np.float32 if qtype == "F32" else np.float16
        return info.shape, np.dtype(dt), numel * np.dtype(dt).itemsize, None
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qt]
    row_bytes = info.shape[-1] // block * type_size
    byte_shape = (*info.shape[:-1], row_bytes)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qt


def gguf_target(out: Path) -> Path:
    """The GGUF file an edge writes for ``out``: ``out`` itself, or, when the output is a
    folder (OUT without ``.gguf`` for a folder source, or :func:`.gguf_split.atomic_splits`'
    temporary folder), a file inside it named after OUT (``model.gguf``; split:
    ``model-00001-of-0000N.gguf``...)."""
    from ..core.atomic import final_name

    if not out.is_dir():
        return out
    from .gguf_split import stem_of

    return out / f"{stem_of(final_name(out))}.gguf"


def write_gguf(
    out: Path,
    arch: str,
    kv_writer: Callable,
    plan: list[Planned],
    quiet: bool,
    opts: ConvertOptions | None = None,
    digests: bool = False,
    on_metadata: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Stream ``plan`` into a GGUF file: metadata via ``kv_writer(writer)``, infos, then data;
    with ``digests``, each :class:`Planned` gets the digest (:func:`_digest`) of the bytes
    written for it;
    ``on_metadata(first file)`` is called once the metadata and tensor infos are on disk,
    before the tensors are written.

    With ``opts.split_max_size`` / ``opts.split_max_tensors`` gguf's writer splits the
    tensors into ``STEM-00001-of-0000N.gguf``... beside ``out`` (metadata in the first,
    ``split.*`` keys in each), as llama.cpp's ``convert_hf_to_gguf.py --split-max-size`` does.

    Returns:
        the files written, in split order (``[out]`` when not split).
    """
    gguf = _gguf()
    for p in plan:
        if len(p.gguf_name) > GGUF_MAX_NAME:
            raise InvalidRequest(
                f"tensor name {p.gguf_name!r} is longer than GGUF's {GGUF_MAX_NAME}-byte limit"
            )
    writer = gguf.GGUFWriter(
        str(out),
        arch,
        split_max_tensors=getattr(opts, "split_max_tensors", None) or 0,
        split_max_size=getattr(opts, "split_max_size", None) or 0,
    )
    kv_writer(writer)
    for p in plan:
        shape, np_dtype, nbytes, raw = _encoded_size(p.source.info, p.qtype)
        writer.add_tensor_info(p.gguf_name, shape, np_dtype, nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    files = [Path(f.name) for f in writer.fout]  # the writer's own split names
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()  # (each of these three flushes its file)
    if on_metadata is not None:
        on_metadata(files[0])
    total = sum(p.source.info.nbytes for p in plan)
    # verified while writing: the read-back hashes the file's bytes and compares them with
    # these, instead of loading and encoding every tensor again.  A tensor is hashed on a
    # worker thread while it is written (hashlib and the file write let go of the GIL),
    # one tensor in flight, so at most two encoded tensors are held.
    hashing: tuple[Planned, Future] | None = None
    started: dict[int, int] = {}  # file descriptor -> bytes handed to the disk so far
    with progress(total, "-> gguf", quiet, unit_bytes=True) as adv, ThreadPoolExecutor(1) as pool:
        for p in plan:
            arr = p.source.load()
            # NaN/inf or out-of-float16 weights would make whole blocks garbage (or inf
            # in F16) with no error but the verifier's: refused up front, naming the tensor
            quants.check_representable(p.gguf_name, arr, p.qtype)
            data = _encode(arr, p.qtype, p.heads, p.offset)
            digest = None
            if digests or (p.qtype in quants.QUANTIZED and p.qtype != "Q8_0"):
                digest = pool.submit(_digest, data)
            writer.write_tensor_data(data)
            _start_writeback(writer.fout, started)
            if hashing is not None:
                hashing[0].digest = hashing[1].result()
            hashing = (p, digest) if digest is not None else None
            adv(p.source.info.nbytes)
        if hashing is not None:
            hashing[0].digest = hashing[1].result()
    writer.close()
    return files


def _start_writeback(files: list, started: dict[int, int]) -> None:
    """Start the disk write of what the writer's files hold beyond ``started``, a chunk at a
    time (:func:`keishiki.core.atomic.start_writeback`): the fsync before the atomic rename
    then finds little left, and on a verified conversion the disk works during the checks."""
    for f in files:
        fd, pos = f.fileno(), f.tell()
        if pos - started.get(fd, 0) >= WRITEBACK_CHUNK:
            f.flush()
            start_writeback(fd, started.get(fd, 0), pos - started.get(fd, 0))
            started[fd] = pos


def _digest(data: Any) -> str:
    """A cryptographic digest of an array's bytes in C order, as hex (a view of a file's map
    is not copied: GGUF's tensors are contiguous): BLAKE3 where installed (``keishiki[gguf]``
    brings it), else sha256.

    Why BLAKE3: every written tensor is hashed twice (as written, and as read back), ~0.4 s of
    CPU for a 650 MB model with sha256, spent beside the write and the tokenizer check's
    child on a small machine.  BLAKE3 is as strong a check (256 bits, collision-resistant)
    at 2.5x sha256's speed on one core here (SHA-NI), and lets go of the GIL like hashlib."""
    buffer = np.ascontiguousarray(np.asarray(data)).reshape(-1).view(np.uint8)
    try:
        import blake3
    except ImportError:
        return "sha256:" + hashlib.sha256(buffer).hexdigest()
    return "blake3:" + blake3.blake3(buffer).hexdigest()


def verify_gguf(
    files: list[Path],
    plan: list[Planned],
    required_keys: list[str],
    readers: list | None = None,
    advance: Callable | None = None,
) -> dict:
    """Read the GGUF back with GGUFReader, every split of it: names, GGML types, shapes, and
    every tensor's values (F32/F16/BF16 and integers: the digest of the bytes read back
    equals that of the bytes written, :func:`write_gguf` ``digests``; Q8_0 within half a
    quantization step of each 32-value block of the source; the other quantized types: the
    bytes written, and the dequantized values' relative RMS error within
    :data:`.gguf_quant.WEIGHT_REL_RMSE`); a split set must also read as one model with
    keishiki's reader (names, split.* keys, tensor counts).

    Args:
        readers: the files' :func:`reference_reader` s when the caller has them (each file
            is opened once for the whole verification); opened here otherwise.
        advance: called with each tensor's source bytes as it is checked (a progress bar).
    """
    readers = readers if readers is not None else [reference_reader(f) for f in files]
    rb = ReadBack(library="gguf.GGUFReader")
    by_name = {t.name: t for reader in readers for t in reader.tensors}
    worst: dict[str, float] = {}  # GGML type -> worst relative RMS error of its tensors
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        # the bytes read back, hashed a few tensors at a time (views of the file's map:
        # nothing is copied; hashlib lets go of the GIL)
        hashed = {
            p.gguf_name: pool.submit(_digest, t.data)
            for p in plan
            if p.qtype not in quants.QUANTIZED
            and p.digest is not None
            and (t := by_name.get(p.gguf_name)) is not None
        }
        _check_tensors(rb, plan, by_name, hashed, worst, advance)
    rb.unexpected.extend(sorted(set(by_name) - {p.gguf_name for p in plan}))
    fields = set(readers[0].fields)  # the first split holds the metadata
    absent = [k for k in required_keys if k not in fields]
    result = rb.result()
    if worst:
        result["quant_rel_rmse"] = {k: round(v, 5) for k, v in sorted(worst.items())}
    problem = _split_problem(files) if len(files) > 1 else None
    if absent or problem:
        result["passed"] = False
        result["reason"] = problem or f"metadata keys missing: {', '.join(absent)}"
    result["metadata_keys_checked"] = len(required_keys)
    if len(files) > 1:
        result["n_files"] = len(files)
    return result


# the GGML type gguf's writer gives a tensor of these dtypes written as they are ("keep")
_KEEP_TYPE = {"int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64", "float64": "F64"}


def _check_tensors(
    rb: ReadBack,
    plan: list[Planned],
    by_name: dict[str, Any],
    hashed: dict[str, Future],
    worst: dict[str, float],
    advance: Callable | None,
) -> None:
    """:func:`verify_gguf`'s tensor by tensor part: each planned tensor against what the
    reader found (``hashed``: the digests of the bytes read back, being computed)."""
    for p in plan:
        if advance:
            advance(p.source.info.nbytes)
        t = by_name.get(p.gguf_name)
        if t is None:
            rb.missing.append(p.gguf_name)
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        wanted = _KEEP_TYPE.get(p.source.info.dtype) if p.qtype == "keep" else p.qtype
        problem = None
        if shape != tuple(p.source.info.shape):
            problem = f"{p.gguf_name}: shape {list(shape)} != {list(p.source.info.shape)}"
        elif wanted and t.tensor_type.name != wanted:
            problem = f"{p.gguf_name}: type {t.tensor_type.name}, wrote {wanted}"
        if problem:
            rb.mismatched.append(p.gguf_name)
            rb.problems.append(problem)
            continue
        if p.gguf_name in hashed:
            if hashed[p.gguf_name].result() == p.digest:
                rb.count_ok()  # bit for bit what was written: no float pass needed
                continue
            # bytes differ: compare with the source's encoding again to say how much
        original = p.source.load()
        expected_src = original
        if p.offset:
            expected_src = cast_array(original, "float32") + np.float32(p.offset)
        if p.heads:
            expected_src = names.permute(expected_src, p.heads)
        if p.qtype == "Q8_0":
            got = quants.dequantize(np.asarray(t.data), t.tensor_type, shape)
            ref = cast_array(expected_src, "float32").astype(np.float32)
            blocks = np.abs(ref.reshape(-1, 32)).max(axis=1) / 127.0
            # rounding to the nearest step (d/2) plus d stored in float16 (|q| <= 127)
            atol = float(blocks.max(initial=0.0) * (0.5 + 127 * 2.0**-11)) * 1.001 + 1e-12
            rb.compare(p.gguf_name, ref, got, original=ref, atol=atol)
        elif p.qtype in quants.QUANTIZED:
            _check_quantized(rb, p, t, expected_src, shape, worst)
        else:
            expected = _encode(original, p.qtype, p.heads, p.offset)
            got = np.asarray(t.data)
            if got.dtype == expected.dtype and got.size == expected.size:
                # the values, so the reported difference is in the tensor's own units
                rb.compare(p.gguf_name, expected.reshape(-1), got.reshape(-1), original=None)
            else:
                rb.compare(
                    p.gguf_name,
                    expected.reshape(-1).view(np.uint8),
                    got.reshape(-1).view(np.uint8),
                    original=None,
                )


def _check_quantized(
    rb: ReadBack,
    p: Planned,
    t,
    expected_src: np.ndarray,
    shape: tuple[int, ...],
    worst: dict[str, float],
) -> None:
    """One quantized tensor read back: its GGML type, the very bytes written (their digest), and
    its values dequantized by gguf-py within the type's error bound."""
    got_bytes = np.ascontiguousarray(np.asarray(t.data))
    rb.n_compared += 1
    problem = None
    if t.tensor_type.name != p.qtype:
        problem = f"{p.gguf_name}: type {t.tensor_type.name}, wrote {p.qtype}"
    elif _digest(got_bytes) != p.digest:
        problem = f"{p.gguf_name}: bytes differ from those written"
    else:
        rb.n_bit_exact += 1
        got = quants.dequantize(got_bytes, t.tensor_type, shape)
        err = quants.weight_error(cast_array(expected_src, "float32"), got)
        rb.max_abs_diff = max(rb.max_abs_diff, err["max_abs"])
        worst[p.qtype] = max(worst.get(p.qtype, 0.0), err["rel_rmse"])
        bound = quants.WEIGHT_REL_RMSE[p.qtype]
        if not err["rel_rmse"] <= bound:
            problem = (
                f"{p.gguf_name}: {p.qtype} relative RMS error {err['rel_rmse']:.3g} over {bound:g}"
            )
    if problem:
        rb.mismatched.append(p.gguf_name)
        rb.problems.append(problem)


def _split_problem(files: list[Path]) -> str | None:
    """Why keishiki's reader (as strict as llama.cpp's) would not read ``files`` as exactly
    one split model; None when it does."""
    from ..errors import KeishikiError
    from ..formats.gguf_split import model_paths

    try:
        found = model_paths(files[0])
    except KeishikiError as exc:
        return f"the splits do not read as one model: {exc}"
    if found != files:
        return f"the splits read as {[p.name for p in found]}, not {[p.name for p in files]}"
    return None


def _split_details(report: StepReport, files: list[Path], opts: ConvertOptions) -> None:
    """Sizes and split file names in ``report`` (OUT names the stem when split)."""
    from .gguf_split import wants_split

    report.bytes_written = sum(f.stat().st_size for f in files)
    if len(files) > 1:
        report.details["split_files"] = [f.name for f in files]
    elif wants_split(opts):
        report.warnings.append(
            "fits in one file under the split limits: written unsplit (as gguf-py does)"
        )


def hf_to_gguf(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``hf-model -> gguf``: an HF causal-LM folder (llama, mistral, qwen2, qwen3, gemma,
    gemma2) as a llama.cpp-loadable GGUF, written as llama.cpp's ``convert_hf_to_gguf.py``
    does (see :mod:`.gguf_archs`).

    Raises:
        InvalidRequest: another model_type.
    """
    config = json.loads((src / "config.json").read_text())
    arch = archs.for_config(config, src)
    refusals, config_warnings = archs.config_problems(arch, config)
    if refusals:
        raise InvalidRequest(f"{src}: {refusals[0]}")
    child = None
    if opts.verify and not arch.bpe_pre_from_transformers:
        # the tokenizer check's child process (:mod:`.encodings`), started first: it encodes
        # with the folder's tokenizer while the GGUF is planned and written, then with the
        # GGUF's while the tensors are read back (the other architectures load the folder's
        # tokenizer in this process anyway, to name the split, and check it here)
        child = _tokenizer_child(src, arch.name)
    try:
        return _hf_to_gguf(src, out, opts, config, arch, config_warnings, child)
    finally:
        if child:  # not asked for (no tokenizer), or a failure before the check
            child.discard()


def _hf_to_gguf(
    src: Path,
    out: Path,
    opts: ConvertOptions,
    config: dict[str, Any],
    arch: archs.GGUFArch,
    config_warnings: list[str],
    child,
) -> StepReport:
    from .gguf_vocab import load_gguf_tokenizer, vocab_from_hf
    from .hf_weights import folder_tensors

    _, st = folder_tensors(src, replace_key(opts))
    metadata = archs.metadata_from_config(arch, config)
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(archs.config_value(config, "num_key_value_heads"))
    _check_heads(src, arch, config, st, n_head, n_head_kv)
    vocab_size = int(config["vocab_size"])
    quant = _default_quant(st, opts)
    plan, warnings = _plan(arch, config, st, quant, n_head, n_head_kv)
    warnings = [*st.warnings, *warnings, *config_warnings]
    vocab, vocab_warnings = vocab_from_hf(src, vocab_size)
    warnings.extend(vocab_warnings)
    # the folder's transformers tokenizer, loaded once for the split and for the check
    source_tokenizer = functools.cache(lambda: _auto_tokenizer(src))
    if vocab and vocab.model == "gpt2" and arch.bpe_pre_from_transformers:
        vocab.pre = _transformers_bpe_pre(source_tokenizer) or vocab.pre

    def kv_writer(w) -> None:
        w.add_name(src.name)
        w.add_file_type(quants.file_type(quant))
        if quant not in ("f32", "f16", "bf16"):
            w.add_quantization_version(_gguf().GGML_QUANT_VERSION)
        for key, kind, value in metadata:
            {"f32": w.add_float32, "str": w.add_string}.get(kind, w.add_uint32)(key, value)
        w.add_vocab_size(vocab_size)
        if vocab:  # special ids come with it (gguf.SpecialVocab also reads config.json)
            vocab.add_to(w)
        else:
            for key, setter in (
                ("bos_token_id", w.add_bos_token_id),
                ("eos_token_id", w.add_eos_token_id),
                ("pad_token_id", w.add_pad_token_id),
            ):
                if isinstance(config.get(key), int) and config[key] >= 0:
                    setter(config[key])

    report = StepReport(edge="hf-model -> gguf", src=str(src), out=str(out), warnings=warnings)
    with Timer() as timer:
        # the first split holds the tokenizer.  A torch-free child reads it as soon as the
        # metadata is written, while the tensors are (the finished file's first bytes are
        # compared with those it read: TokenizerChild.read_the_same); any other child reads
        # the finished file
        early = bool(opts.verify and child and vocab and child.torch_free)
        files = write_gguf(
            gguf_target(out),
            arch.name,
            kv_writer,
            plan,
            opts.quiet,
            opts,
            digests=opts.verify,
            on_metadata=(lambda first: child.send_gguf(first, metadata_only=True))
            if early
            else None,
        )
        _split_details(report, files, opts)
        required = arch.required_keys()
        if vocab:
            required += vocab.required_keys()
        if opts.verify:
            if child and vocab and not early:
                child.send_gguf(files[0])
            readers = [reference_reader(f) for f in files]  # each file opened once
            total = sum(p.source.info.nbytes for p in plan)
            with progress(total, "verifying", opts.quiet, unit_bytes=True) as adv:
                report.verify = verify_gguf(files, plan, required, readers, adv)
            if vocab:
                with progress(None, "verifying the tokenizer", opts.quiet):
                    flags = _tokenizer_flags(readers[0])
                    if (
                        child
                        and not (child.torch_free and child.failed())
                        and child.read_the_same(files[0])
                    ):
                        check_tokenizer(report, child.expected, child.got)
                    else:  # no child, its torch-free loading could not, or the file's
                        # metadata changed after the child read it: here, as usual
                        check_tokenizer(
                            report,
                            source_tokenizer,
                            lambda: load_gguf_tokenizer(files[0], flags),
                        )
            if quant not in ("f32", "f16", "bf16"):
                check_quality(report, src, files[0], quant, opts.trust)
    report.n_tensors = len(plan)
    report.details.update(
        quant=quant, types=sorted({p.qtype for p in plan}), architecture=arch.name
    )
    if vocab:
        report.details["tokenizer"] = {
            "model": vocab.model,
            "pre": vocab.pre,
            "source": vocab.source,
            "n_tokens": len(vocab.tokens),
        }
    report.seconds = timer.seconds
    return report


def _plan(
    arch: archs.GGUFArch,
    config: dict[str, Any],
    st: SourceTensors,
    quant: str,
    n_head: int,
    n_head_kv: int,
) -> tuple[list[Planned], list[str]]:
    """Every tensor of ``st`` as a :class:`Planned` write for ``arch``, and warnings."""
    to_gguf, _ = arch.name_maps(int(config["num_hidden_layers"]))
    plan, warnings = [], []
    for t in st.tensors:
        if names.SKIPPED_HF.search(t.name):
            continue
        if t.name == "lm_head.weight" and not arch.store_lm_head:
            # llama.cpp skips it too: these models tie it to the embedding
            if config.get("tie_word_embeddings") is False:
                warnings.append(
                    f"lm_head.weight: not stored ({arch.name} GGUF files tie it "
                    f"to token_embd), but config.json says it is not tied"
                )
            continue
        gname = to_gguf.get(t.name)
        if gname is None:
            warnings.append(f"{t.name}: no GGUF name for it in the {arch.name} layout; kept as is")
            gname = t.name
        heads = names.rotary_heads(gname, n_head, n_head_kv) if arch.permute_qk else None
        plan.append(Planned(gname, t, _pick_type(t.info, quant), heads, arch.offset_of(t.name)))
    _apply_mix(plan, quant, n_head, n_head_kv, int(config["num_hidden_layers"]))
    return plan, warnings


def _transformers_bpe_pre(load_tokenizer: Callable) -> str | None:
    """llama.cpp's name for the split regex transformers applies to the folder's tokenizer
    (``load_tokenizer()``; the names from transformers' own GGUF table,
    ``GGUF_PRE_TOKENIZER_SPLITS``); None when unknown.

    Why not tokenizer.json's: transformers 5 picks the tokenizer class from model_type too, so
    a qwen2 folder gets ``Qwen2Tokenizer``'s split (digits one by one) over the file's, and the
    GGUF must split like what users of the folder get.
    """
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        tokenizer = load_tokenizer()
        pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    except Exception:  # no transformers, another layout, no fast tokenizer: keep the file's
        return None
    from .gguf_vocab import is_gpt2_split

    if is_gpt2_split(pre):
        # GPT-2's own split: llama.cpp's "gpt-2" is that regex ("default" splits digits in 3s)
        return "gpt-2"
    steps = pre.get("pretokenizers") or [pre]
    patterns = {
        (step.get("pattern") or {}).get("Regex") for step in steps if step.get("type") == "Split"
    }
    return next(
        (name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex in patterns), None
    )


def _tokenizer_flags(reader) -> dict[str, Any]:
    """The scalar ``tokenizer.ggml.*`` keys :func:`load_gguf_tokenizer` needs, read back from
    the written file by its GGUFReader (what llama.cpp will see, not what was meant)."""
    wanted = (
        "tokenizer.ggml.model",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.add_space_prefix",
    )
    return {k: reader.fields[k].contents() for k in wanted if k in reader.fields}


def _tokenizer_child(folder: Path, arch: str):
    """The child process that encodes both sides of the tokenizer check
    (:class:`.encodings.TokenizerChild`; without torch where ``arch``, the GGUF architecture,
    allows), started now; None when transformers is missing (the
    check then says so itself) or no interpreter can start (the check then runs here)."""
    from .._optional import available

    if not available("transformers"):
        return None
    from .encodings import start

    try:
        return start(folder, arch)
    except OSError:  # no interpreter to start (an embedded Python)
        return None


def _auto_tokenizer(folder: Path):
    """transformers' ``AutoTokenizer`` of an HF folder (no remote code)."""
    from .._optional import require

    transformers = require("transformers", extra="hf", purpose="check the converted tokenizer")
    return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def check_tokenizer(report: StepReport, load_expected: Callable, load_got: Callable) -> None:
    """Compare two tokenizers' encodings into ``report.verify["tokenizer"]``.

    A difference on the strict samples fails the step's verification (a Mismatch, like a
    tensor that differs); one where HF and llama.cpp conventions differ is a warning; a
    tokenizer transformers cannot load is a warning (not checked), never a crash.
    """
    from .gguf_vocab import compare_encodings

    try:
        expected, got = load_expected(), load_got()
    except MissingDependency as exc:
        report.warnings.append(f"tokenizer not checked: {exc}")
        return
    except Exception as exc:  # transformers refusing a tokenizer: say which and go on
        kind = getattr(exc, "kind", type(exc).__name__)  # (a child process's: its own type)
        report.warnings.append(
            f"tokenizer not checked: transformers could not load it ({kind}: {exc})"
        )
        return
    result = compare_encodings(expected, got)
    report.verify["tokenizer"] = result
    report.warnings.extend(f"tokenizer: {note}" for note in result["warnings"])
    if not result["passed"]:
        report.verify["passed"] = False
        reasons = [report.verify.get("reason"), result["reason"]]
        report.verify["reason"] = "; ".join(r for r in reasons if r)


def check_quality(report: StepReport, src: Path, gguf_file: Path, quant: str, trust: bool) -> None:
    """Run the source and the quantized GGUF (dequantized) on fixed prompts into
    ``report.verify["quality"]`` (:mod:`.quant_verify`): logit error, KL divergence and
    greedy agreement within the type's tolerance, or the step fails.  Without torch and
    transformers it is a warning (the tensors were still read back)."""
    from .._optional import available
    from ..core.gate import admit
    from .quant_verify import gguf_quality

    if not (available("torch") and available("transformers")):
        report.warnings.append(
            "quantized model not run against the source (needs torch and "
            "transformers); its tensors were read back"
        )
        return
    admit(src, trust=trust, purpose="run it against its quantized GGUF")
    result = gguf_quality(src, gguf_file, quant)
    report.verify["quality"] = result
    if not result["passed"]:
        report.verify["passed"] = False
        reasons = [report.verify.get("reason"), result.get("reason")]
        report.verify["reason"] = "; ".join(r for r in reasons if r)


def replace_key(opts: ConvertOptions) -> ConvertOptions:
    """``opts`` without ``dtype`` (GGUF edges apply it through the quant type)."""
    from dataclasses import replace

    return replace(opts, dtype=None)


def safetensors_to_gguf(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``safetensors -> gguf``: a generic GGUF (architecture ``keishiki``) with the
    tensors under their own names; f32 by default, or ``--quant``."""
    st = source_tensors(src, replace_key(opts))
    quant = _default_quant(st, opts)
    lossless = not (opts.quant or opts.dtype)
    plan = [Planned(t.name, t, _pick_type(t.info, quant, lossless)) for t in st.tensors]
    _apply_mix(plan, quant, generic=True)

    def kv_writer(w) -> None:
        w.add_name(src.stem)
        w.add_file_type(quants.file_type(quant))
        if quant not in ("f32", "f16", "bf16"):
            w.add_quantization_version(_gguf().GGML_QUANT_VERSION)
        if st.aliases:
            w.add_string("keishiki.aliases", json.dumps(st.aliases, sort_keys=True))

    report = StepReport(
        edge="safetensors -> gguf", src=str(src), out=str(out), warnings=list(st.warnings)
    )
    with Timer() as timer:
        files = write_gguf(
            gguf_target(out), "keishiki", kv_writer, plan, opts.quiet, opts, digests=opts.verify
        )
        _split_details(report, files, opts)
        if opts.verify:
            total = sum(p.source.info.nbytes for p in plan)
            with progress(total, "verifying", opts.quiet, unit_bytes=True) as adv:
                report.verify = verify_gguf(files, plan, ["general.architecture"], advance=adv)
    report.n_tensors = len(plan)
    report.details.update(quant=quant, types=sorted({p.qtype for p in plan}))
    report.seconds = timer.seconds
    return report
