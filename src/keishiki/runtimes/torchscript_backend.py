"""TorchScript backend: a traced causal LM, with or without a KV cache.

A TorchScript file has no generation loop and no config, so the layout is read from the
forward schema: the inputs are ``input_ids`` [, ``attention_mask`` [, ``position_ids``
[, past key/value pairs]]] and the result is the logits or a tuple (logits, presents...).
Without cache tensors the whole prefix is recomputed every step (the cost grows with the
square of the length); without an ``attention_mask`` input prompts cannot be padded into one
batch and run one at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._optional import require
from ..errors import InvalidRequest
from .base import LoopBackend, model_config_value


class TorchScriptBackend(LoopBackend):
    """``torch.jit.load`` + the shared loop; the cache layout is optimum's (see onnxruntime)."""

    name = "torchscript"

    def __init__(self, ts_file: Path, config: dict | None = None, device: str | None = None):
        super().__init__()
        self.torch = torch = require("torch", purpose="run a TorchScript model")
        self.path = ts_file
        self.device = device or "cpu"
        try:
            self.module = torch.jit.load(str(ts_file), map_location=self.device).eval()
        except RuntimeError as exc:
            raise InvalidRequest(
                f"{ts_file}: TorchScript could not load it: {str(exc).splitlines()[0]}"
            ) from None
        graph_inputs = list(self.module.graph.inputs())[1:]  # [0] is self
        self.n_inputs = len(graph_inputs)
        returns = str(self.module.forward.schema).rsplit("->", 1)[-1].strip()
        self.n_outputs = returns.count("Tensor") if returns.startswith("(") else 1
        n_past = max(self.n_inputs - 3, 0)
        if self.n_inputs < 1 or n_past % 2 or (n_past and self.n_outputs != 1 + n_past):
            raise InvalidRequest(
                f"{ts_file}: forward{returns and ''} takes {self.n_inputs} "
                f"tensors and returns {self.n_outputs}: not a causal LM layout "
                f"(ids [, mask [, positions [, past k/v…]]] → logits [, presents])"
            )
        self.cached = n_past > 0
        self.batchable = self.n_inputs >= 2
        config = config or {}
        meta = _keishiki_meta(ts_file)  # written by keishiki's exporter: the model's shape
        if self.cached:
            sizes = _traced_sizes(graph_inputs[3]) or [None] * 4
            heads = (
                meta.get("kv_heads")
                or sizes[1]
                or model_config_value(config, "num_key_value_heads", "num_attention_heads")
            )
            head_dim = meta.get("head_dim") or sizes[3] or model_config_value(config, "head_dim")
            if not heads or not head_dim:
                raise InvalidRequest(
                    f"{ts_file}: cannot tell the KV cache's head sizes; put the "
                    f"model's config.json beside the tokenizer"
                )
            self.past_shape = (heads, head_dim)
            self.n_past = n_past
        self.vocab_size = meta.get("vocab") or model_config_value(config, "vocab_size")
        self.max_model_len = model_config_value(config, "max_position_embeddings")
        how = (
            f"KV cache ({n_past // 2} layers)"
            if self.cached
            else "no KV cache in the traced graph: the prefix is recomputed every step"
        )
        self.details = [f"torch {torch.__version__} on {self.device}", how]
        if not self.batchable:
            self.details.append("no attention_mask input: prompts run one at a time")

    def _forward(self, state, input_ids, attention_mask, position_ids):
        torch = self.torch
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        with torch.inference_mode():
            if self.cached:
                if state is None:
                    heads, head_dim = self.past_shape
                    empty = torch.zeros(
                        (input_ids.shape[0], heads, 0, head_dim), device=self.device
                    )
                    state = [empty] * self.n_past
                out = self._call(t(input_ids), t(attention_mask), t(position_ids), *state)
                return self._last_logits(out[0]), list(out[1:])
            all_ids = input_ids if state is None else np.concatenate([state, input_ids], axis=1)
            args = [t(all_ids)]
            if self.n_inputs >= 2:
                args.append(t(attention_mask))
            if self.n_inputs >= 3:
                args.append(t(np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)))
            out = self._call(*args)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            return self._last_logits(logits), all_ids

    def _state_parts(self, state) -> list:
        # with a cache: the flat past tensors [batch, kv_heads, past, head_dim]; without: ids
        return list(state) if self.cached else [state]

    def _state_from_parts(self, parts: list):
        return list(parts) if self.cached else parts[0]

    def _score(self, token_ids: list[int]) -> np.ndarray:
        """Without a cache every decode step already runs the whole prefix, so one call on
        all ids gives every row at once (token by token it took O(n²): 46 s for 250
        tokens of the tiny Llama, against 0.1 s)."""
        if self.cached:
            return super()._score(token_ids)
        torch = self.torch
        ids = np.asarray([token_ids], dtype=np.int64)
        mask = np.ones_like(ids)
        args = [ids, mask, np.arange(ids.shape[1], dtype=np.int64)[None, :]][: self.n_inputs]
        with torch.inference_mode():
            out = self._call(*(torch.from_numpy(a).to(self.device) for a in args))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        self._last_logits(logits)  # the same shape check as decoding
        return logits[0].float().cpu().numpy()

    def _call(self, *args):
        """Call the module; its own failure (a TorchScript error, an exception its code
        raises) means it is not the causal LM the schema suggested: one line, not a trace."""
        try:
            return self.module(*args)
        except (RuntimeError, self.torch.jit.Error) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else type(exc).__name__
            if isinstance(exc, getattr(self.torch, "OutOfMemoryError", ())):
                raise InvalidRequest(
                    f"{self.path}: out of memory running the model on {self.device}: {last}"
                ) from None
            raise InvalidRequest(
                f"{self.path}: the TorchScript model failed on token ids (not a causal LM?): {last}"
            ) from None

    def _last_logits(self, logits):
        """The last position's logits ``[batch, vocab]`` of a ``[batch, seq, vocab]`` output."""
        if not isinstance(logits, self.torch.Tensor) or logits.dim() != 3:
            shape = (
                list(logits.shape)
                if isinstance(logits, self.torch.Tensor)
                else type(logits).__name__
            )
            raise InvalidRequest(
                f"{self.path}: the TorchScript model returned {shape}, not "
                f"logits [batch, tokens, vocab]: not a causal LM"
            )
        return logits[:, -1, :].float().cpu().numpy()


def _keishiki_meta(ts_file: Path) -> dict:
    """The ``keishiki.json`` facts keishiki's TorchScript exporter stores ({} otherwise)."""
    try:
        from .._convert.torchscript_export import read_meta
    except ImportError:
        return {}
    return read_meta(ts_file)


def _traced_sizes(graph_input) -> list | None:
    """The sizes a traced input was recorded with (None when the type has none)."""
    try:
        return graph_input.type().sizes()
    except (AttributeError, RuntimeError):
        return None
