"""Which files of a repository ``--prefer-safetensors`` leaves on the Hub.

transformers (and diffusers) load ``*.safetensors`` when a folder has them and fall back to
pickled weights only when it has none, so a repository that ships both formats (most older
ones do) is pulled as the loader will read it: in every folder that holds a
``*.safetensors``, the pickled files beside them (``*.bin``, ``*.pt``, ``*.pth``,
``*.ckpt``) are skipped.  A folder with pickles only keeps them (there is nothing else to
load), and so does a folder whose safetensors are elsewhere (``onnx/`` beside a root
``pytorch_model.bin`` is another model).  Decided from the file list, before any download.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def skipped_for_safetensors(files: Iterable[str]) -> list[str]:
    """The pickled files (sorted) that have ``*.safetensors`` in their own folder.

    >>> skipped_for_safetensors(["model.safetensors", "pytorch_model.bin", "onnx/model.onnx"])
    ['pytorch_model.bin']
    """
    files = list(files)
    with_safetensors = {posixpath.dirname(f) for f in files if f.endswith(".safetensors")}
    return sorted(
        f
        for f in files
        if f.lower().endswith(PICKLED_WEIGHTS) and posixpath.dirname(f) in with_safetensors
    )


_GLOB_SPECIAL = re.compile(r"([*?\[])")


def literal_pattern(name: str) -> str:
    """A glob (as huggingface_hub's ``fnmatch`` filters read it) matching exactly ``name``."""
    return _GLOB_SPECIAL.sub(r"[\1]", name)
