"""The ONNX Model Zoo's ``ONNX_HUB_MANIFEST.json``: its entries, onnx.hub's name, tag and opset
rules, and the paths it may name.

The format is the one ``onnx.hub`` (removed from onnx in 2026-02, PR 7678) read from
github.com/onnx/models: a JSON list of entries ::

    {"model": "MNIST", "model_path": "vision/classification/mnist/model/mnist-8.onnx",
     "onnx_version": "1.3", "opset_version": 8,
     "metadata": {"model_sha": "<sha256>", "model_bytes": 26454, "tags": ["vision", ...],
                  "io_ports": {...}, "model_with_data_path": ".../mnist-8.tar.gz",
                  "model_with_data_sha": "<sha256>", "model_with_data_bytes": 26413}}

Matching follows onnx.hub exactly: names compare case-insensitively, a tag filter keeps
entries sharing at least one tag (case-insensitive), ``opset=None`` picks the highest opset
and ``opset=N`` only an entry of exactly that opset (no "nearest lower" fallback).

Nothing here touches the network; :mod:`.zoo` fetches the manifest and the files.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from ..errors import HubError

MANIFEST = "ONNX_HUB_MANIFEST.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelInfo:
    """One manifest entry, with onnx.hub's ``ModelInfo`` attributes.

    Attributes:
        model: the model's name as the manifest spells it (``"ResNet50"``).
        model_path: the ``.onnx`` file, relative to the repository root.
        metadata: the entry's ``metadata`` (``model_sha``, ``model_bytes``, ``tags``,
            ``io_ports``, ``model_with_data_path``, ``model_with_data_sha``...).
        model_sha: the sha256 the ``.onnx`` file must have (None when the entry gives none:
            such a file is refused before use).
        tags: the entry's tags.
        opset: its ``opset_version``.
        raw_model_info: the entry as read.
    """

    def __init__(self, raw_model_info: dict[str, Any]) -> None:
        self.model: str = raw_model_info["model"]
        self.model_path: str = raw_model_info["model_path"]
        self.metadata: dict[str, Any] = raw_model_info["metadata"]
        self.model_sha: str | None = self.metadata.get("model_sha")
        self.tags: set[str] = set(self.metadata.get("tags") or [])
        self.opset: int = raw_model_info["opset_version"]
        self.raw_model_info = raw_model_info

    def __str__(self) -> str:
        return (
            f"ModelInfo(model={self.model}, opset={self.opset}, path={self.model_path}, "
            f"metadata={self.metadata})"
        )

    __repr__ = __str__

    def to_dict(self) -> dict[str, Any]:
        """The entry as the manifest has it (for ``--json``)."""
        return dict(self.raw_model_info)


def parse(data: bytes, where: str) -> list[ModelInfo]:
    """The entries of a manifest file's bytes; ``where`` names it in messages.

    Raises:
        HubError: not JSON, not a list, or an entry without a string ``model`` and
            ``model_path``, an integer ``opset_version`` and an object ``metadata``.
    """
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise HubError(
            f"{where}: not a valid {MANIFEST} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]})"
        ) from None
    if not isinstance(raw, list):
        raise HubError(
            f"{where}: not a valid {MANIFEST} (a JSON list of models expected, "
            f"found {type(raw).__name__})"
        )
    entries = []
    for i, item in enumerate(raw):
        problem = _entry_problem(item)
        if problem:
            raise HubError(f"{where}: entry {i} of {MANIFEST} {problem}")
        entries.append(ModelInfo(item))
    return entries


def _entry_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "is not an object"
    for key, kind in (("model", str), ("model_path", str), ("metadata", dict)):
        if not isinstance(item.get(key), kind):
            return f"has no {kind.__name__} {key!r}"
    opset = item.get("opset_version")
    if not isinstance(opset, int) or isinstance(opset, bool):
        return "has no integer 'opset_version'"
    tags = item["metadata"].get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return "has 'tags' that are not a list of strings"
    return None


def matching(
    entries: Iterable[ModelInfo], model: str | None = None, tags: Iterable[str] | None = None
) -> list[ModelInfo]:
    """onnx.hub's ``list_models`` filter: the entries named ``model`` (case-insensitive;
    None: all) that share at least one of ``tags`` (case-insensitive; None: no tag filter)."""
    found = [m for m in entries if model is None or m.model.lower() == model.lower()]
    if tags is None:
        return found
    wanted = {t.lower() for t in tags}
    return [m for m in found if wanted & {t.lower() for t in m.tags}]


def choose(entries: list[ModelInfo], model: str, opset: int | None, where: str) -> ModelInfo:
    """onnx.hub's ``get_model_info`` choice among the entries named ``model``: the highest
    opset, or exactly ``opset``.

    Raises:
        HubError: no model of that name (the closest names are suggested), or none with that
            opset (the opsets there are listed).
    """
    named = matching(entries, model)
    if not named:
        raise HubError(
            f"{where}: no model named {model!r} in the zoo's manifest{_suggest(entries, model)}"
        )
    if opset is None:
        return max(named, key=lambda m: m.opset)  # the first of the highest, as onnx.hub
    exact = [m for m in named if m.opset == opset]
    if not exact:
        opsets = ", ".join(str(o) for o in sorted({m.opset for m in named}))
        raise HubError(
            f"{where}: {named[0].model} has no version with opset {opset} (opsets: {opsets})"
        )
    return exact[0]


def _suggest(entries: Iterable[ModelInfo], model: str) -> str:
    import difflib

    names = sorted({m.model for m in entries})
    close = difflib.get_close_matches(model.lower(), [n.lower() for n in names], n=3)
    spelled = [n for n in names if n.lower() in close]
    return f" (did you mean {', '.join(spelled)}?)" if spelled else ""


def repo_path(path: object, entry: ModelInfo, key: str, where: str) -> str:
    """``path`` (the entry's ``key``) when it names a file inside the repository.

    A manifest is data from whoever controls the repository: an absolute path, a drive
    letter, a backslash (a Windows separator the Hub never uses), ``..``, ``.``, an empty
    part or a NUL would make the download name a file outside the repository (or outside
    the cache folder huggingface_hub joins it to).

    Raises:
        HubError: missing, or not a plain relative path inside the repository.
    """
    if not isinstance(path, str) or not path:
        raise HubError(
            f"{where}: {entry.model} (opset {entry.opset}) has no {key!r} in the manifest"
        )
    parts = path.split("/")
    if (
        "\\" in path
        or "\0" in path
        or path.startswith("/")
        or re.match(r"^[A-Za-z]:", path)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise HubError(
            f"{where}: the manifest's {key} {path!r} for {entry.model} leads "
            f"outside the repository: refused"
        )
    return path


def sha256_of(entry: ModelInfo, key: str, where: str) -> str:
    """The sha256 the manifest gives under ``metadata[key]``, lower-case.

    Raises:
        HubError: none given, or not 64 hex digits: a file that cannot be checked is not used.
    """
    sha = entry.metadata.get(key)
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise HubError(
            f"{where}: the manifest gives no valid sha256 ({key}) for "
            f"{entry.model} (opset {entry.opset}): refusing an unchecked file"
        )
    return sha.lower()
