"""keras: Keras 3 ``.keras`` archives (zip of ``metadata.json``, ``config.json``, ``model.weights.h5``).

The JSON members give the Keras version and the model's layer classes; the weights come
from the embedded HDF5 file, opened by h5py straight from the zip member (no temporary
copy, nothing extracted).  Weights live under ``layers/<layer>/vars/<i>``; optimizer state
under ``optimizer/`` is counted, not listed.  ``Lambda`` layers are flagged because Keras
would deserialise their Python bytecode when loading with ``safe_mode=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ..core.model import ModelInfo
from ..core.source import ZIP_ERRORS, Source, check_expansion
from ..errors import CorruptFile
from . import keras_h5
from .registry import Match

FORMAT = "keras"
WEIGHTS = "model.weights.h5"
MAX_JSON_BYTES = 64 * 1024 * 1024


def sniff(src: Source) -> Match | None:
    names = set(src.zip_names)
    if (
        "config.json" in names
        and "metadata.json" in names
        and (WEIGHTS in names or "model.weights.npz" in names)
    ):
        return Match(FORMAT, None, reason="zip with metadata.json, config.json and model weights")
    return None


def _json_member(src: Source, name: str) -> Any:
    import json

    try:
        return json.loads(src.read_member(name, limit=MAX_JSON_BYTES))
    except (ValueError, RecursionError) as exc:
        raise CorruptFile(src.path, f"zip member {name!r} is not valid JSON: {exc}") from None


class _MemberFile:
    """h5py.File over a zip member, closing both together (``with`` support)."""

    def __init__(self, path: Any, member: str):
        h5py = keras_h5._h5py()
        self.zf = zipfile.ZipFile(path)
        try:
            check_expansion(Path(path), self.zf.getinfo(member))  # a deflated bomb inside
            self.fh = self.zf.open(member)  # seekable: h5py reads it like a file
            self.h5 = h5py.File(self.fh, "r")
        except Exception:
            self.zf.close()
            raise

    def __enter__(self):
        return self.h5

    def __exit__(self, *exc: object) -> None:
        self.h5.close()
        self.fh.close()
        self.zf.close()


def read(src: Source, match) -> ModelInfo:
    metadata = _json_member(src, "metadata.json")
    config = _json_member(src, "config.json")
    if not isinstance(metadata, dict) or not isinstance(config, dict):
        raise CorruptFile(src.path, "metadata.json / config.json are not JSON objects")
    details: dict[str, Any] = {
        "zip_members": src.zip_names,
        "keras_version": metadata.get("keras_version"),
        "date_saved": metadata.get("date_saved"),
    }
    details.update(keras_h5.summarize_config(config))
    infos: list = []
    if WEIGHTS in src.zip_names:
        try:
            with _MemberFile(src.path, WEIGHTS) as h5:
                datasets, skipped = keras_h5.walk_datasets(h5, str(src.path))
                all_infos = [keras_h5.dataset_info(n, d) for n, d in datasets]
        except CorruptFile:
            raise
        except (*ZIP_ERRORS, RuntimeError, KeyError) as exc:
            raise CorruptFile(src.path, f"{WEIGHTS} is not readable HDF5: {exc}") from None
        # offsets inside the embedded file are not offsets in the archive: drop them
        infos = [
            type(t)(t.name, t.dtype, t.shape, t.nbytes, file=WEIGHTS)
            for t in all_infos
            if not t.name.startswith("optimizer/")
        ]
        details.update(
            n_datasets_total=len(all_infos),
            n_weight_datasets=len(infos),
            has_optimizer_weights=len(all_infos) > len(infos),
        )
        if skipped:
            details["skipped_links"] = skipped[:50]
    warnings = []
    if details["lambda_layers"]:
        warnings.append(keras_h5.lambda_warning(details["lambda_layers"]))
    path = src.path
    return ModelInfo(
        path=str(path),
        format=FORMAT,
        variant=None,
        format_version=details["keras_version"],
        tensors=infos,
        metadata={k: str(v) for k, v in metadata.items()},
        warnings=warnings,
        details={FORMAT: details},
        tensor_loader=keras_h5.loader_for(lambda: _MemberFile(path, WEIGHTS)),
    )
