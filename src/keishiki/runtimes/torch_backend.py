"""PyTorch backend: a Hugging Face folder through transformers, with its KV cache, driven by
keishiki's own loop so sampling is the shared numpy sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import InvalidRequest, RuntimeUnavailable
from .base import LoopBackend

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def torch_dtype(torch: Any, dtype: str | None, config_dtype: str | None, device: str) -> Any:
    """The torch dtype to load in: ``dtype`` if given; for None/"auto" the config's on a GPU
    and float32 on a CPU (half precision matmuls are slow or missing on most CPUs)."""
    if dtype in (None, "auto"):
        name = config_dtype if device != "cpu" and config_dtype in _DTYPES else "float32"
    elif dtype in _DTYPES:
        name = _DTYPES[dtype]
    else:
        raise InvalidRequest(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, _DTYPES[name])


class TorchBackend(LoopBackend):
    """``AutoModelForCausalLM`` with the model's own cache; ``logits_to_keep=1`` so only the
    last position's logits are computed, as ``generate`` does."""

    name = "torch"

    def __init__(
        self,
        model_dir: Path,
        dtype: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        pad_id: int | None = None,
    ):
        super().__init__()
        self.torch = torch = require("torch", purpose="run a Hugging Face model")
        transformers = require("transformers", extra="hf", purpose="run a Hugging Face model")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            config = transformers.AutoConfig.from_pretrained(
                model_dir, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"{model_dir}: transformers cannot read its config.json: {str(exc).splitlines()[0]}"
            ) from None
        config_dtype = str(getattr(config, "dtype", None) or "").replace("torch.", "") or None
        self.dtype = torch_dtype(torch, dtype, config_dtype, self.device)
        try:
            _quiet(transformers)
            level = transformers.utils.logging.get_verbosity()
            # missing weights are keishiki's refusal below, not transformers' load report
            transformers.utils.logging.set_verbosity_error()
            try:
                model, loading = transformers.AutoModelForCausalLM.from_pretrained(
                    model_dir,
                    dtype=self.dtype,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                    # a weight whose shape is not the config's: keishiki's refusal below
                    # names it (transformers raises a RuntimeError that does not)
                    ignore_mismatched_sizes=True,
                )
            finally:
                transformers.utils.logging.set_verbosity(level)
        except OSError as exc:  # config.json without weights
            raise InvalidRequest(
                f"{model_dir}: no weights transformers can load: {str(exc).splitlines()[0]}"
            ) from None
        except ValueError as exc:
            archs = ", ".join(getattr(config, "architectures", None) or ["?"])
            raise InvalidRequest(
                f"{model_dir}: {archs} is not a causal language model "
                f"transformers can generate with ({str(exc).splitlines()[0]})"
            ) from None
        mismatched = list(loading.get("mismatched_keys") or [])
        if mismatched:
            name, in_file, in_model = min(mismatched)  # (a set in transformers 5)
            raise InvalidRequest(
                f"{model_dir}: its weights do not fit its config.json: {name} is "
                f"{list(in_file)} in the checkpoint, {list(in_model)} in the model"
                + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else "")
            )
        missing = sorted(loading.get("missing_keys") or [])
        if missing:  # a BertModel folder gets a randomly initialised LM head: not a causal LM
            archs = ", ".join(getattr(config, "architectures", None) or ["?"])
            raise InvalidRequest(
                f"{model_dir}: not a causal language model checkpoint ({archs}): its weights "
                f"lack {len(missing)} tensor(s) a causal-LM head needs ({', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}), which transformers would fill at random"
            )
        self.model = model.to(self.device).eval()
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.max_model_len = getattr(config, "max_position_embeddings", None)
        self.pad_id = pad_id if pad_id is not None else 0
        # transformers 5.x renamed past_key_values to cache (the old name warns, later fails)
        self.cache_arg = "cache" if "cache" in _forward_params(self.model) else "past_key_values"
        self.details = [
            f"transformers {transformers.__version__} on {self.device}",
            str(self.dtype).replace("torch.", ""),
            "KV cache",
        ]

    def _score(self, token_ids: list[int]) -> np.ndarray:
        """One forward over all ids with every position's logits kept (transformers' own
        prefill): 250 prompt tokens of the tiny Llama took 1.2 s fed one at a time."""
        torch = self.torch
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=self.device)[None],
                use_cache=False,
            )
        return out.logits[0].float().cpu().numpy()

    def _forward(self, state, input_ids, attention_mask, position_ids):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
                position_ids=torch.from_numpy(position_ids).to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_arg: state},
            )
            logits = out.logits[:, -1, :].float().cpu().numpy()
        return logits, getattr(out, self.cache_arg)

    def _state_parts(self, state) -> list:
        """The cache's key and value tensors, layer by layer.  Only a cache of plain growing
        layers splits by row: a sliding-window or recurrent layer keeps positions or state
        that rows cannot be cut from."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(state, "layers", None)
        if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or []}) or [
                type(state).__name__
            ]
            raise RuntimeUnavailable(
                f"continuous batching needs a cache of full-attention "
                f"layers; this model's is {', '.join(kinds)}"
            )
        return [t for layer in layers for t in (layer.keys, layer.values)]

    def _state_from_parts(self, parts: list):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=list(zip(parts[0::2], parts[1::2])))


def _forward_params(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _quiet(transformers) -> None:
    """No weight-loading progress bars: the CLI's output is the generated text."""
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
