"""Path finding in the conversion graph: the shortest chain of edges from one format to another."""

from __future__ import annotations

from collections import deque
from typing import Sequence

from ..errors import NoConversionPath
from .base import Edge


def find_path(src_format: str, to: str, edges: Sequence[Edge] | None = None) -> list[Edge]:
    """The shortest list of edges leading from ``src_format`` to ``to`` (breadth-first).

    Among paths of equal length the one using edges listed earlier wins, so weight edges
    (listed first) are preferred over graph edges.  An edge marked ``first_only`` starts a
    path or is not taken.

    Example: ``find_path("torch7", "gguf")`` → ``[torch7 -> safetensors, safetensors -> gguf]``.

    Raises:
        NoConversionPath: no chain of edges reaches ``to``; the message lists what ``src_format``
            can become.
    """
    if edges is None:
        from .edges import EDGES as edges
    direct = [e for e in edges if e.src == src_format and e.dst == to]
    if direct:
        return direct[:1]
    previous: dict[str, Edge] = {}
    queue = deque([src_format])
    seen = {src_format}
    while queue:
        fmt = queue.popleft()
        for edge in edges:
            if edge.src != fmt or edge.dst in seen or (edge.first_only and fmt != src_format):
                continue
            seen.add(edge.dst)
            previous[edge.dst] = edge
            if edge.dst == to:
                return _unwind(previous, src_format, to)
            queue.append(edge.dst)
    reachable = sorted(seen - {src_format})
    hint = (
        f"; {src_format} converts to: {', '.join(reachable)}"
        if reachable
        else f"; keishiki has no conversion from {src_format}"
    )
    raise NoConversionPath(
        f"no conversion path from {src_format} to {to}{hint} (keishiki formats lists every edge)"
    )


def _unwind(previous: dict[str, Edge], src_format: str, to: str) -> list[Edge]:
    path = []
    fmt = to
    while fmt != src_format:
        edge = previous[fmt]
        path.append(edge)
        fmt = edge.src
    return path[::-1]


def describe(path: Sequence[Edge]) -> list[str]:
    """``["torch7 -> safetensors", "safetensors -> gguf"]``."""
    return [e.name for e in path]
