"""llama.cpp's rotary Q/K row permutation (and the HF tensors it does not store).  Tensor
names and config ↔ metadata keys of every architecture come from :mod:`.gguf_archs` (gguf's
own ``TensorNameMap``), for the conversion edges and ``keishiki map``/``compare`` alike.

llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) reorders the rows of
``q_proj``/``k_proj`` (weights and biases) so that rotary embedding pairs are interleaved
((re, im) adjacent) instead of split in halves as in Hugging Face.  The inverse here restores
the HF order exactly, so HF → GGUF → HF round-trips bit for bit at f32.
"""

from __future__ import annotations

import re

import numpy as np

# tensors llama.cpp does not store (recomputed at load time)
SKIPPED_HF = re.compile(r"\.rotary_emb\.inv_freq$")


def rotary_heads(gguf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads the Q/K permutation groups by for this tensor (None: not permuted)."""
    kind = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else ""
    if kind == "attn_q":
        return n_head
    if kind == "attn_k":
        return n_head_kv
    return None


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: HF half-split rotary rows → interleaved pairs."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute`: interleaved rotary rows → HF half-split order."""
    return (
        w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )
