"""The Hugging Face Hub: ``pull`` a repository into the standard cache (then scan it), and
read a repository's config and weight headers with ranged requests before downloading it
(``info hf://org/name``); and the ONNX Model Hub's replacement, the zoo on the Hub
(``keishiki.hub.load("mnist")``, :mod:`.zoo`).

Everything goes through ``huggingface_hub`` (``snapshot_download``, ``HfApi``,
``HfFileSystem``): the same cache transformers and vLLM read, the same ``HF_ENDPOINT``,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and token.  ``huggingface_hub`` is imported
only when one of these runs, never by ``import keishiki``.

Modules: :mod:`.pull` (``keishiki.pull``), :mod:`.remote` (``inspect("hf://...")``),
:mod:`.select` (which files ``--prefer-safetensors`` skips), :mod:`._hf` (the import,
the ``hf://`` parser and huggingface_hub's errors as one-line :class:`~keishiki.errors.HubError`),
:mod:`.zoo` (onnx.hub's ``list_models``, ``get_model_info``, ``load``,
``download_model_with_test_data``, re-exported here), :mod:`.zoo_manifest` (the
``ONNX_HUB_MANIFEST.json`` format), :mod:`.zoo_archive` (the test-data archive's safe extraction).
"""

from __future__ import annotations

HF_PREFIX = "hf://"


def is_hf_path(path: object) -> bool:
    """Whether ``path`` names a Hub repository or file (``hf://org/name[@rev][/file]``)."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


# onnx.hub's API, imported from .zoo on first use (it stays light: huggingface_hub is imported
# only when a function runs)
_ZOO = (
    "list_models",
    "get_model_info",
    "load",
    "download_model_with_test_data",
    "ModelInfo",
    "DEFAULT_REPO",
)


def __getattr__(name: str):
    if name in _ZOO:
        from . import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'keishiki.hub' has no attribute {name!r}")


__all__ = ["is_hf_path", "HF_PREFIX", *_ZOO]
