"""tflite: TensorFlow Lite flatbuffers (file identifier ``TFL3`` at bytes 4..8).

Summary only: the schema version and the counts of subgraphs, tensors, operators and
buffers, read straight from the flatbuffer tables with bounds checks (no TensorFlow).
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

from ..core.model import ModelInfo
from ..core.source import Source
from .registry import Match

FORMAT = "tflite"
MAX_FLATBUFFER_BYTES = 2 << 30  # flatbuffers address at most 2 GiB


class _Flat:
    """Minimal flatbuffer table reader over bytes; every read is bounds-checked."""

    def __init__(self, data: bytes):
        self.data = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table`` (None if absent)."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vsize = struct.unpack_from("<H", self.data, vtable)[0]
        if 4 + 2 * index + 2 > vsize:
            return None
        rel = struct.unpack_from("<H", self.data, vtable + 4 + 2 * index)[0]
        return table + rel if rel else None

    def ref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, table: int, index: int) -> list[int]:
        """Positions of the elements of a vector-of-tables field ([] when absent)."""
        pos = self.field(table, index)
        if pos is None:
            return []
        vec = self.ref(pos)
        n = self.u32(vec)
        if vec + 4 + 4 * n > len(self.data):
            raise ValueError("vector runs past the end of the file")
        return [self.ref(vec + 4 + 4 * i) for i in range(n)]

    def string(self, table: int, index: int) -> str | None:
        pos = self.field(table, index)
        if pos is None:
            return None
        start = self.ref(pos)
        n = self.u32(start)
        return bytes(self.data[start + 4 : start + 4 + min(n, 4096)]).decode(
            "utf-8", errors="replace"
        )


def sniff(src: Source) -> Match | None:
    head = src.head
    if src.is_dir or len(head) < 8 or head[4:8] != b"TFL3":
        return None
    root = struct.unpack_from("<I", head, 0)[0]
    if not 8 <= root < src.size:
        return None
    return Match(FORMAT, None, reason="TFL3 flatbuffer identifier")


def _summary(data: bytes) -> dict[str, Any]:
    fb = _Flat(data)
    model = fb.u32(0)
    out: dict[str, Any] = {}
    pos = fb.field(model, 0)  # Model.version
    out["schema_version"] = fb.u32(pos) if pos is not None else None
    out["n_operator_codes"] = len(fb.vector(model, 1))
    subgraphs = fb.vector(model, 2)
    out["n_subgraphs"] = len(subgraphs)
    out["subgraphs"] = [
        {
            "name": fb.string(sg, 4),
            "n_tensors": len(fb.vector(sg, 0)),
            "n_operators": len(fb.vector(sg, 3)),
        }
        for sg in subgraphs[:16]
    ]
    out["description"] = fb.string(model, 3)
    out["n_buffers"] = len(fb.vector(model, 4))
    return out


def read(src: Source, match) -> ModelInfo:
    warnings = [
        "summary only: keishiki names a TFLite model's parts; running it needs TensorFlow Lite"
    ]
    details: dict[str, Any] = {"file_identifier": "TFL3"}
    if src.size <= MAX_FLATBUFFER_BYTES:
        # memory-mapped: only the table headers are touched, never the weight buffers
        with open(src.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                details.update(_summary(mm))  # type: ignore[arg-type]
            except (struct.error, ValueError, IndexError) as exc:
                warnings.append(f"flatbuffer tables unreadable ({exc}); identified by TFL3 only")
    version = details.get("schema_version")
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=None,
        format_version=str(version) if version is not None else None,
        details={FORMAT: details},
        warnings=warnings,
    )
