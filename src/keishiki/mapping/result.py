"""What :func:`keishiki.mapping.map_names` returns: :class:`TensorPair` and :class:`NameMap`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..core.tensor import TensorInfo
from .names import uncounted_reason


@dataclass
class TensorPair:
    """One tensor of A and its counterpart in B.

    Attributes:
        a, b: the names on each side.
        how: ``exact`` | ``prefix`` | ``gguf`` | ``value`` | ``value-transposed`` |
            ``folded`` (B's tensor is A's layer with a BatchNorm folded in: ``extra["fold"]``
            names the tensors, see :mod:`keishiki.mapping.folding`).
        a_shape, b_shape, a_dtype, b_dtype: as the readers report them.
        transform: what to apply to B's array to line it up with A's: None, ``"transpose"``
            (ONNX MatMul weights), ``"llama-rope-permute"`` / ``"llama-rope-unpermute"``
            (llama.cpp's Q/K row permutation for its rotary layout, applied to or undone on
            B; the compare also tries the array as is, since not every writer permutes),
            ``"subtract-offset"`` / ``"add-offset"`` (``extra["offset"]``: llama.cpp stores
            gemma's RMSNorm weights as ``w + 1``).
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

    @classmethod
    def of(
        cls,
        ta: TensorInfo,
        tb: TensorInfo,
        how: str,
        transform: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> TensorPair:
        """The pair of ``ta`` (A) and ``tb`` (B), shapes and dtypes taken from both."""
        return cls(
            ta.name,
            tb.name,
            how,
            ta.shape,
            tb.shape,
            ta.dtype,
            tb.dtype,
            transform,
            dict(extra or {}),
        )

    @property
    def transposed(self) -> bool:
        return self.transform == "transpose"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "a": self.a,
            "b": self.b,
            "how": self.how,
            "transposed": self.transposed,
            "a_shape": list(self.a_shape),
            "b_shape": list(self.b_shape),
            "a_dtype": self.a_dtype,
            "b_dtype": self.b_dtype,
        }
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
    # A's BatchNorm tensors consumed by a fold: {name: B tensor they were folded into}
    folded_into: dict[str, str] = field(default_factory=dict)
    # the same for B's BatchNorms, when B is the checkpoint and A the export
    folded_into_b: dict[str, str] = field(default_factory=dict)

    def not_counted(self, t: TensorInfo, side: str) -> str | None:
        """Why unpaired ``t`` (on side ``"A"`` or ``"B"``) is no difference, or None when
        it is one: a graph constant, a computed buffer, a BatchNorm folded into B."""
        if side == "A" and t.name in self.folded_into:
            return f"BatchNorm folded into {self.folded_into[t.name]}"
        if side == "B" and t.name in self.folded_into_b:
            return f"BatchNorm folded into {self.folded_into_b[t.name]}"
        return uncounted_reason(t, self.a_format if side == "A" else self.b_format)

    @property
    def counted_unmatched(self) -> tuple[list[str], list[str]]:
        """Unpaired names that count as a difference (graph constants, computed buffers and
        folded BatchNorms excluded)."""
        return (
            [t.name for t in self.unmatched_a if not self.not_counted(t, "A")],
            [t.name for t in self.unmatched_b if not self.not_counted(t, "B")],
        )

    def how_counts(self) -> dict[str, int]:
        return dict(Counter(p.how for p in self.pairs).most_common())

    def to_dict(self) -> dict[str, Any]:
        ua, ub = self.counted_unmatched
        return {
            "a": {"path": self.a_path, "format": self.a_format},
            "b": {"path": self.b_path, "format": self.b_format},
            "n_pairs": len(self.pairs),
            "how": self.how_counts(),
            "pairs": [p.to_dict() for p in self.pairs],
            "unmatched_a": [_brief(t, self.not_counted(t, "A")) for t in self.unmatched_a],
            "unmatched_b": [_brief(t, self.not_counted(t, "B")) for t in self.unmatched_b],
            "n_unmatched_counted": len(ua) + len(ub),
        }


def _brief(t: TensorInfo, reason: str | None) -> dict[str, Any]:
    out = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
    if reason:
        out["not_counted"] = reason
    return out
