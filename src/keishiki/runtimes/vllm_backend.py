"""vLLM backend: a thin adapter over ``vllm.LLM`` (GPU only).

vLLM's engine is how keishiki runs a model across several GPUs or machines: the
``tensor_parallel_size`` and ``pipeline_parallel_size`` arguments go straight through.
vLLM pins its own torch and transformers, so install keishiki into vLLM's environment with
its core dependencies only (``pip install keishiki``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .._optional import available
from ..errors import RuntimeUnavailable
from .base import Backend, Sequence
from .params import SamplingParams

# keishiki field -> vllm.SamplingParams keyword (the same names: vLLM's are the model)
_SAME = [
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "max_tokens",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "include_stop_str_in_output",
    "logprobs",
    "prompt_logprobs",
]


def sampling_kwargs(params: SamplingParams) -> dict:
    """The ``vllm.SamplingParams(**kwargs)`` equivalent of ``params`` (one to one; top_k 0
    becomes vLLM's "disabled" value -1, which every vLLM version accepts)."""
    kwargs = {name: getattr(params, name) for name in _SAME}
    kwargs["stop"] = list(params.stop) or None
    kwargs["stop_token_ids"] = list(params.stop_token_ids) or None
    if kwargs["top_k"] == 0:
        kwargs["top_k"] = -1
    kwargs.update(params.extra)
    return kwargs


def supported_architectures() -> tuple[str | None, set[str] | None]:
    """(vLLM version, architectures) from ``keishiki/data/vllm_supported.json``: every name
    on any of its lists, as the installed vLLM's ``ModelRegistry.get_supported_archs()``
    would answer; (None, None) when the list is not shipped."""
    from ..formats.hf_model import vllm_architectures, vllm_registry

    try:
        registry = vllm_registry()
    except (OSError, ValueError, ModuleNotFoundError):
        return None, None
    return registry.get("vllm_version"), vllm_architectures(registry) or None


def check_supported(model_dir: Path, registry=None, installed: str | None = None) -> None:
    """Raise RuntimeUnavailable naming the architecture when vLLM does not implement it.

    ``registry`` is the installed ``vllm.ModelRegistry`` (the truth for that version,
    ``installed``); the shipped list stands in when it is absent.  vLLM could still run
    such a model through its Transformers backend, which is slower and a choice the user
    makes: ``model_impl="transformers"`` skips this check.
    """
    version, archs = supported_architectures()
    if registry is not None and hasattr(registry, "get_supported_archs"):
        try:
            archs, version = set(registry.get_supported_archs()), installed
        except Exception:  # an API change in vLLM must not stop the load: keep the list
            pass
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return
    model_archs = config.get("architectures") or []
    if archs and model_archs and not any(a in archs for a in model_archs):
        raise RuntimeUnavailable(
            f"{model_dir}: architecture {', '.join(model_archs)} is not on vLLM "
            f"{version or ''}'s supported list; use backend='torch' (or convert to ONNX), or "
            f"pass model_impl='transformers' to run it through vLLM's Transformers backend"
        )


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU (imports torch: only call when vLLM is installed)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class VllmBackend(Backend):
    """Hands whole requests to ``vllm.LLM.generate`` and copies its results back."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        tokenizer: str | None = None,
        dtype: str | None = None,
        seed: int | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        **engine_kwargs,
    ):
        super().__init__()
        if not available("vllm"):
            raise RuntimeUnavailable(
                "backend 'vllm' needs vLLM, which is not installed: "
                "pip install vllm (in its own environment, then "
                "pip install keishiki there), or use backend='torch'"
            )
        if not cuda_available():
            raise RuntimeUnavailable(
                "backend 'vllm' needs a CUDA GPU and none is visible; "
                "use backend='torch' or 'onnxruntime' on a CPU"
            )
        import vllm

        if engine_kwargs.get("model_impl") != "transformers":
            check_supported(model_dir, getattr(vllm, "ModelRegistry", None), vllm.__version__)
        self.vllm = vllm
        self.engine = vllm.LLM(
            model=str(model_dir),
            tokenizer=tokenizer,
            dtype=dtype or "auto",
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            **engine_kwargs,
        )
        self.details = [
            f"vllm {vllm.__version__}",
            f"tensor_parallel_size={tensor_parallel_size}",
            f"pipeline_parallel_size={pipeline_parallel_size}",
        ]

    def _run_impl(self, seqs: list[Sequence]):
        by_request: dict[int, list[Sequence]] = {}
        for seq in seqs:
            by_request.setdefault(seq.request, []).append(seq)
        requests = list(by_request.values())
        prompts = [{"prompt_token_ids": group[0].prompt_ids} for group in requests]
        params = [
            self.vllm.SamplingParams(**sampling_kwargs(group[0].params.clone(n=len(group))))
            for group in requests
        ]
        results = self.engine.generate(prompts, params, use_tqdm=False)
        for group, result in zip(requests, results):
            prompt_logprobs = _raw_logprobs(getattr(result, "prompt_logprobs", None))
            for seq, completion in zip(group, result.outputs):
                seq.output_ids = list(completion.token_ids)
                seq.text = completion.text
                seq.finish_reason = completion.finish_reason or "length"
                seq.stop_reason = completion.stop_reason
                seq.logprobs = _raw_logprobs(getattr(completion, "logprobs", None))
                seq.prompt_logprobs = prompt_logprobs
        yield seqs


def _raw_logprobs(steps) -> list | None:
    """vLLM's ``[{token_id: Logprob}]`` (None entries kept) as keishiki's raw
    ``[{token_id: (logprob, rank)}]``, which ``LLM`` decodes into its own Logprob."""
    if steps is None:
        return None
    return [
        None
        if step is None
        else {int(tid): (float(lp.logprob), getattr(lp, "rank", None)) for tid, lp in step.items()}
        for step in steps
    ]
