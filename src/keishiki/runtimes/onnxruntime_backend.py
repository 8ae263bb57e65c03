"""ONNX Runtime backend: a causal-LM graph with or without a KV cache, needing neither torch
nor transformers.

The layout is discovered from the graph's names (keishiki's exporter and optimum use the same):
inputs ``input_ids``, ``attention_mask``, optional ``position_ids`` (and ``use_cache_branch``
in optimum's merged decoders) and
``past_key_values.{i}.key/value`` ``[batch, kv_heads, past, head_dim]``; outputs ``logits``
and ``present.{i}.key/value``.  The first step feeds an empty past (length 0); each later step
feeds the previous step's presents.  A graph without past inputs recomputes the prefix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .._optional import require
from ..errors import InvalidRequest
from .base import LoopBackend, model_config_value

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bfloat16)": np.float32,
}


def pick_providers(ort, requested: list[str] | None) -> list[str]:
    """CUDA first when onnxruntime-gpu offers it (ORT falls back to CPU without a GPU)."""
    available = ort.get_available_providers()
    if requested:
        return requested
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or available


class OnnxRuntimeBackend(LoopBackend):
    """An ``InferenceSession`` stepping through the graph's past/present tensors."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_file: Path,
        config: dict | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        super().__init__()
        ort = require("onnxruntime", extra="onnx", purpose="run an ONNX model")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # keep ORT's warnings about unused initializers quiet
        self.session = ort.InferenceSession(
            str(onnx_file), options, providers=pick_providers(ort, providers)
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs:
            raise InvalidRequest(
                f"{onnx_file}: not a causal language model graph (inputs "
                f"{', '.join(list(inputs)[:4])}; outputs {', '.join(outputs[:4])}; "
                f"generation needs input_ids → logits)"
            )
        self.input_names = set(inputs)
        self.past_names = sorted((n for n in inputs if _PAST.match(n)), key=_layer_order)
        self.present_names = sorted((o for o in outputs if _PRESENT.match(o)), key=_layer_order)
        self.output_names = ["logits"] + self.present_names
        self.cached = bool(self.past_names) and len(self.past_names) == len(self.present_names)
        config = config or {}
        if self.cached:
            self.past_shape, self.past_dtype = self._past_layout(inputs, config)
        logits_shape = self.session.get_outputs()[outputs.index("logits")].shape
        vocab = logits_shape[-1] if logits_shape and isinstance(logits_shape[-1], int) else None
        self.vocab_size = vocab or model_config_value(config, "vocab_size")
        self.max_model_len = model_config_value(config, "max_position_embeddings")
        self.details = [
            f"onnxruntime {ort.__version__}",
            self.session.get_providers()[0],
            f"KV cache ({len(self.past_names) // 2} layers)"
            if self.cached
            else "no KV cache in the graph: the prefix is recomputed every step",
        ]

    def _past_layout(self, inputs: dict, config: dict) -> tuple[tuple, type]:
        first = inputs[self.past_names[0]]
        shape = list(first.shape)
        heads, head_dim = shape[1], shape[3]
        if not isinstance(heads, int):
            heads = model_config_value(config, "num_key_value_heads", "num_attention_heads")
        if not isinstance(head_dim, int):
            head_dim = model_config_value(config, "head_dim") or (
                model_config_value(config, "hidden_size")
                // model_config_value(config, "num_attention_heads")
            )
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise InvalidRequest(
                f"{first.name} has symbolic head sizes {shape} and there is no "
                f"config.json beside the model to read them from"
            )
        return (heads, head_dim), _NP_TYPES.get(first.type, np.float32)

    def _score(self, token_ids: list[int]) -> np.ndarray:
        """Without a cache every decode step runs the whole prefix anyway: one run on all
        ids gives every row (token by token was O(n²))."""
        if self.cached:
            return super()._score(token_ids)
        ids = np.asarray([token_ids], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
        }
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        return np.asarray(self.session.run(["logits"], feed)[0][0], dtype=np.float32)

    def _forward(self, state, input_ids, attention_mask, position_ids):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        first = state is None
        if self.cached:
            if state is None:
                heads, head_dim = self.past_shape
                empty = np.zeros((input_ids.shape[0], heads, 0, head_dim), self.past_dtype)
                state = {name: empty for name in self.past_names}
            feed.update(state)
        else:  # recompute: the whole sequence so far goes in every step
            all_ids = input_ids if state is None else np.concatenate([state, input_ids], axis=1)
            feed["input_ids"] = all_ids
            position_ids = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)
            state = all_ids
        if "position_ids" in self.input_names:
            feed["position_ids"] = position_ids
        if "use_cache_branch" in self.input_names:
            # optimum's merged decoder: the no-past branch on the first step, then the cached one
            feed["use_cache_branch"] = np.array([state is not None and not first], dtype=bool)
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        results = self.session.run(self.output_names, feed)
        logits = np.asarray(results[0][:, -1, :], dtype=np.float32)
        if self.cached:
            state = dict(zip(self.past_names, results[1:]))
        return logits, state

    def _state_parts(self, state) -> list:
        # with a cache: the past tensors [batch, kv_heads, past, head_dim]; without: the ids
        return [state[name] for name in self.past_names] if self.cached else [state]

    def _state_from_parts(self, parts: list):
        return dict(zip(self.past_names, parts)) if self.cached else parts[0]


def _layer_order(name: str) -> tuple[int, int]:
    match = _PAST.match(name) or _PRESENT.match(name)
    return int(match.group(1)), 0 if match.group(2) == "key" else 1
