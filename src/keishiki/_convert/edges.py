"""The conversion graph: every format keishiki knows and every edge between them.

Weight-carrying edges (this list) stream tensors and are verified by reading the result
back; graph edges (:mod:`keishiki._convert.graph_edges`) capture or rewrite a computation and
are verified by running both.  Nothing heavy is imported here: an edge names its function
as a string and is imported only when it runs.
"""

from __future__ import annotations

from ..formats.registry import FORMATS as REGISTRY
from .base import Edge

# format id -> (what it is, module in keishiki/formats that reads it), from the format registry
FORMATS: dict[str, tuple[str, str]] = {spec.id: (spec.what, spec.module) for spec in REGISTRY}

# pip extra -> the modules it must make importable (checked before a conversion starts)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "safetensors": ("safetensors",),
    "hf": ("safetensors",),
    "gguf": ("gguf",),
    "onnx": ("onnx", "onnxruntime"),
    "h5": ("h5py",),
    "flax": (),  # keishiki reads msgpack itself (formats/flax_msgpack.py)
}

_W = "keishiki._convert.weights"
_H = "keishiki._convert.hf_weights"
_G = "keishiki._convert.gguf_edges"

WEIGHT_EDGES: list[Edge] = [
    Edge(
        "pytorch",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors",),
        description="state_dict (or --key of a checkpoint) streamed tensor by tensor; ties recorded",
    ),
    Edge(
        "safetensors",
        "pytorch",
        f"{_W}:to_pytorch",
        ("torch",),
        description="torch.save zip from memory-mapped tensors; recorded ties restored",
    ),
    Edge(
        "safetensors",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors",),
        description="rewrite (e.g. --dtype bfloat16), ties kept",
    ),
    Edge(
        "torch7",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors",),
        description="Lua Torch weights named like the equivalent PyTorch module",
    ),
    Edge(
        "torch7",
        "pytorch",
        f"{_W}:to_pytorch",
        ("torch",),
        description="Lua Torch weights as a PyTorch state_dict",
    ),
    Edge(
        "numpy",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors",),
        description="npz/npy arrays by name",
    ),
    Edge(
        "keras-h5",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors", "h5"),
        description="Keras HDF5 weights by their layer path",
    ),
    Edge(
        "flax-msgpack",
        "safetensors",
        f"{_W}:to_safetensors",
        ("safetensors",),
        description="Flax state by its tree path",
    ),
    Edge(
        "hf-model",
        "safetensors",
        f"{_H}:to_safetensors",
        ("hf",),
        description="HF folder with model.safetensors (sharded with --shard-size); or one file",
    ),
    Edge(
        "hf-model",
        "pytorch",
        f"{_H}:to_pytorch",
        ("hf", "torch"),
        description="HF folder with pytorch_model.bin (sharded with --shard-size); or one file",
    ),
    Edge(
        "hf-model",
        "hf-model",
        f"{_H}:to_safetensors",
        ("hf",),
        description="re-save an HF folder as safetensors (dtype change, re-sharding)",
    ),
    Edge(
        "gguf",
        "safetensors",
        f"{_G}:gguf_to_safetensors",
        ("gguf", "hf"),
        description="dequantized; llama/qwen2/qwen3/gemma/gemma2/phi3 names mapped back to "
        "Hugging Face (llama Q/K un-permuted, gemma norm +1 undone)",
    ),
    Edge(
        "gguf",
        "hf-model",
        f"{_G}:gguf_to_hf",
        ("gguf", "hf"),
        description="HF folder: config.json from GGUF metadata (llama, qwen2, qwen3, gemma, "
        "gemma2, phi3), model.safetensors, tokenizer",
        first_only=True,  # (pytorch -> gguf -> hf-model made a generic GGUF, then failed)
    ),
    Edge(
        "hf-model",
        "gguf",
        f"{_G}:hf_to_gguf",
        ("gguf", "hf"),
        lossless=False,
        description="llama, mistral, qwen2, qwen3, gemma, gemma2, phi3 as llama.cpp writes "
        "them, f32/f16/bf16/q8_0, q4_0/q4_1/q5_0/q5_1 and llama.cpp's k-quant mixes "
        "(--quant q4_K_M ...); lossless at f32",
    ),
    Edge(
        "safetensors",
        "gguf",
        f"{_G}:safetensors_to_gguf",
        ("gguf", "hf"),
        lossless=False,
        description="tensors kept by name (generic GGUF); lossless at f32",
    ),
]

from .graph_edges import GRAPH_EDGES  # noqa: E402  (after WEIGHT_EDGES: it imports Edge)

# --to onnx --quant int8|int4 (and `keishiki quantize`) ends the path with this edge; listed
# last so path finding never picks it for a plain onnx -> onnx rewrite
ONNX_QUANT_EDGE = Edge(
    "onnx",
    "onnx",
    "keishiki._convert.onnx_quant:quantize_edge",
    ("onnx",),
    lossless=False,
    description="--quant int8 (quantize_dynamic) / int4 (MatMulNBits, "
    "--block-size) with onnxruntime's quantizers; run against "
    "the original",
)

EDGES: list[Edge] = [*WEIGHT_EDGES, *GRAPH_EDGES, ONNX_QUANT_EDGE]


def formats_table() -> list[dict]:
    """Every format: id, what, readable (keishiki has a reader), writable (some edge writes it)."""
    import importlib.util

    writable = {e.dst for e in EDGES}
    rows = []
    for fid, (what, module) in FORMATS.items():
        readable = importlib.util.find_spec(f"keishiki.formats.{module}") is not None
        rows.append({"id": fid, "what": what, "readable": readable, "writable": fid in writable})
    return rows


def edges_table() -> list[dict]:
    """Every edge: src, dst, extras, lossless, description."""
    return [
        {
            "src": e.src,
            "dst": e.dst,
            "extras": list(e.extras),
            "lossless": e.lossless,
            "description": e.description,
        }
        for e in EDGES
    ]
