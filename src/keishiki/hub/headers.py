"""Weight headers read by range: a safetensors file's 8-byte length and then exactly its
header; a GGUF file's header from a prefix that grows until the header fits.  Parsed by
keishiki's own readers (:mod:`keishiki.formats.safetensors`, :mod:`keishiki.formats.gguf`),
which refuse what the safetensors library and llama.cpp refuse.
"""

from __future__ import annotations

import posixpath
import struct
from concurrent.futures import ThreadPoolExecutor

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from .ranged import RangedRepo

SAFETENSORS_FIRST_READ = 64 * 1024
GGUF_FIRST_READ = 64 * 1024
# a 262k-token vocabulary with its merges is ~20 MB of header: 64 MiB bounds what a hostile
# header can make keishiki fetch (and re-parse at each ×4) before it gives up
GGUF_MAX_HEADER = 64 * 1024 * 1024
SHARD_WORKERS = 8


def safetensors_header(repo: RangedRepo, name: str) -> tuple[list[TensorInfo], dict[str, str]]:
    """The tensors and ``__metadata__`` of one safetensors file: its length and header from
    one request when the header fits :func:`safetensors_first_read`, else two."""
    from ..formats import safetensors as st

    size = repo.size(name)
    where = repo.where(name)
    if size < 8:
        raise CorruptFile(where, "shorter than the 8-byte header length", offset=0)
    prefix = repo.read(name, 0, safetensors_first_read(size))
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > st.MAX_HEADER_BYTES or 8 + n > size:
        raise CorruptFile(
            where,
            f"header length {n} exceeds the file size {size} (or the "
            f"{st.MAX_HEADER_BYTES}-byte limit)",
            offset=0,
        )
    header = prefix[8 : 8 + n]
    if len(header) < n:  # a header longer than the first read: the rest, exactly
        header += repo.read(name, len(prefix), 8 + n - len(prefix))
    try:
        metadata, entries = st.validate(st.parse_header(header), size - 8 - n)
    except ValueError as exc:
        raise CorruptFile(where, str(exc), offset=8) from None
    from ..core import dtypes

    tensors = [
        TensorInfo(
            t,
            dtypes.from_safetensors(code),
            shape,
            end - begin,
            data_offset=8 + n + begin,
            file=name,
        )
        for t, code, shape, begin, end in entries
    ]
    return tensors, metadata


def safetensors_first_read(size: int) -> int:
    """How much of a safetensors file the first request asks for: the 8-byte length and,
    speculatively, the header behind it (a 7B shard's is ~10 KB, so one request usually
    holds it), but never more than 1% of the file nor 64 KiB; at least the 8 bytes."""
    return min(size, max(8, min(SAFETENSORS_FIRST_READ, size // 100)))


def read_shards(repo: RangedRepo, shards: list[str]) -> tuple[list[TensorInfo], dict[str, str]]:
    """Every shard's header, a few at a time (each is two small independent requests)."""
    with ThreadPoolExecutor(max_workers=min(SHARD_WORKERS, max(len(shards), 1))) as pool:
        results = list(pool.map(lambda s: safetensors_header(repo, s), shards))
    tensors = [t for ts, _m in results for t in ts]
    metadata: dict[str, str] = {}
    for _ts, meta in results:
        for key, value in meta.items():
            metadata.setdefault(key, value)
    return tensors, metadata


def gguf_models(repo: RangedRepo) -> list[str]:
    """GGUF files that start a model (a split model counts once, by its first split)."""
    from ..formats.gguf_split import is_later_split

    return [
        f
        for f in sorted(repo.sizes)
        if f.lower().endswith(".gguf") and not is_later_split(posixpath.basename(f))
    ]


def gguf_header(repo: RangedRepo, name: str) -> ModelInfo:
    """A GGUF file's header, parsed by keishiki's reader from a prefix that grows (×4) until
    the whole header (metadata, vocabulary, tensor infos) lies inside it."""
    from ..formats import gguf

    size, where = repo.size(name), repo.where(name)
    if size < 24:
        raise CorruptFile(where, f"{size} bytes is shorter than a GGUF header", offset=0)
    prefix = b""
    want = min(size, GGUF_FIRST_READ)
    while True:
        prefix += repo.read(name, len(prefix), want - len(prefix))
        try:
            header = gguf._parse(prefix, size, where, full_arrays=False)
            if len(prefix) >= min(size, header.data_offset):
                break
        except (struct.error, IndexError):
            pass  # the header goes on past the prefix
        if want >= min(size, GGUF_MAX_HEADER):
            raise CorruptFile(
                where,
                f"no complete GGUF header in the first {want} bytes (pull the file to inspect it)",
            )
        want = min(size, want * 4, GGUF_MAX_HEADER)
    kv = header.kv
    tokens = kv.get("tokenizer.ggml.tokens")
    info = {
        "version": header.version,
        "architecture": kv.get("general.architecture"),
        "tensor_count": len(header.tensors),
        "kv_count": header.kv_count,
        "alignment": header.alignment,
        "tensor_data_offset": header.data_offset,
        "n_vocab_tokens": tokens["length"]
        if isinstance(tokens, dict)
        else (len(tokens) if isinstance(tokens, list) else None),
        "ggml_types": gguf._type_histogram(header.tensors),
        "kv": kv,
        "header_bytes": header.data_offset,
    }
    warnings = []
    if "split.count" in kv and (kv.get("split.count") or 1) > 1:
        warnings.append(
            f"split {kv.get('split.no', 0) + 1} of {kv['split.count']}: only this "
            f"split's tensors are listed"
        )
    info["file"] = name
    return ModelInfo(
        path=name,
        format="gguf",
        format_version=str(header.version),
        tensors=header.tensors,
        gguf=info,
        warnings=warnings,
        metadata={
            k: v
            for k, v in kv.items()
            if k.startswith("general.") and not isinstance(v, (dict, list))
        },
    )
