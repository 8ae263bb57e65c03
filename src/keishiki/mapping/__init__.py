"""Pair every tensor of model A with its counterpart in model B, across formats.

The same weights carry different names in different files: a DataParallel checkpoint adds
``module.``, ``torch.compile`` adds ``_orig_mod.``, a wrapper adds ``model.``, GGUF renames
``model.layers.0.mlp.up_proj.weight`` to ``blk.0.ffn_up.weight``, and ONNX exporters replace
names by ``onnx::MatMul_<N>`` / ``val_<N>`` and store Linear weights transposed.  The matchers
run in this order, each on what the previous ones left unpaired:

1. ``exact``: the same name on both sides.
2. ``gguf``: HF names mapped to GGUF names (the converter's names for the architectures it
   writes, else the gguf package's own ``gguf.get_tensor_name_map`` for the file's
   architecture).
3. ``prefix``: equal after dropping wrapper prefixes (``module.``, ``_orig_mod.``) or after
   dropping a leading dotted prefix that only one side has (``model.``, ``bert.``), when the
   element counts agree.
4. ``value`` / ``value-transposed``: by content: a hash of the bytes (floats as float32 so a
   bfloat16 tensor finds its float32 copy), and for 2-D tensors of its transpose.  This
   reads tensor data (one tensor at a time), so it runs only on what names could not pair.
5. ``folded``: a layer with the BatchNorm after it folded in (the ONNX exporter's constant
   folding writes ``onnx::Conv_<N>``): recomputed from A's tensors and compared.

Shapes are compared in keishiki's row-major convention (format readers already undo GGUF's
reversed dims); ``transform`` says how B's array must be changed to line up with A's.

Modules: ``pairs`` (:func:`map_names`, the order above), ``result`` (:class:`TensorPair`,
:class:`NameMap`), ``names`` (wrapper/prefix pairing, which unpaired tensors count, name
similarity), ``gguf`` (HF ↔ GGUF names), ``values`` (tensor data, content digests, value
pairing), ``folding`` (BatchNorm folds).
"""

from __future__ import annotations

from .gguf import LLAMA_ROPE, gguf_architecture
from .names import (
    COMPUTED_BUFFERS,
    WRAPPER_PREFIXES,
    is_uncounted,
    name_similarity,
    strip_wrappers,
    uncounted_reason,
)
from .pairs import map_names
from .result import NameMap, TensorPair
from .values import FLOAT_FOR_HASH, GGML_QUANT, content_digest, load_array

__all__ = [
    "COMPUTED_BUFFERS",
    "FLOAT_FOR_HASH",
    "GGML_QUANT",
    "LLAMA_ROPE",
    "NameMap",
    "TensorPair",
    "WRAPPER_PREFIXES",
    "content_digest",
    "gguf_architecture",
    "is_uncounted",
    "load_array",
    "map_names",
    "name_similarity",
    "strip_wrappers",
    "uncounted_reason",
]
