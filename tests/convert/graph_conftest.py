"""Helpers for the graph-edge tests (imported explicitly; the shared conftest is not ours).

Exports are slow, so each is made once per test process and reused: ``export_once(key, fn)``
memoises by key in a session-wide temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

_CACHE: dict[str, Any] = {}
_ROOT: list[Path] = []


def work_dir() -> Path:
    """One temporary folder per test process for the memoised exports."""
    if not _ROOT:
        import atexit
        import shutil

        _ROOT.append(Path(tempfile.mkdtemp(prefix="keishiki-graph-tests-")))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    return _ROOT[0]


def export_once(key: str, make: Callable[[Path], Any]) -> Any:
    """``make(folder)`` the first time ``key`` is asked for, the memoised result afterwards."""
    if key not in _CACHE:
        folder = work_dir() / key
        _CACHE[key] = make(folder)
    return _CACHE[key]


def onnx_export(
    tiny_llama: Path, opset: int = 17, exporter: str = "torchscript", **kwargs
) -> tuple[Path, dict]:
    """(folder, facts) of ``export_causal_lm`` on the tiny Llama, made once per settings."""
    from keishiki._convert.onnx_export import export_causal_lm

    key = f"onnx-{exporter}-{opset}-" + "-".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return export_once(
        key,
        lambda folder: (
            folder,
            export_causal_lm(tiny_llama, folder, opset=opset, exporter=exporter, **kwargs),
        ),
    )


def initializer_names(model_path: Path) -> list[str]:
    import onnx

    return [t.name for t in onnx.load(str(model_path), load_external_data=False).graph.initializer]


def opset_of(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def torch_greedy_ids(model_dir: Path, steps: int = 20) -> tuple[list[int], list[int]]:
    """(prompt ids, 20 greedy tokens) from transformers' own ``generate`` (independent of
    keishiki's verification loop)."""
    import torch
    from transformers import AutoModelForCausalLM

    from keishiki._convert.run_verify import seed_token_ids

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    prompt = seed_token_ids(model.config.vocab_size)
    model.generation_config.eos_token_id = None  # 20 tokens whatever comes out
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(prompt), max_new_tokens=steps, do_sample=False, pad_token_id=0
        )
    return prompt[0].tolist(), out[0, prompt.shape[1] :].tolist()


def ort_greedy_ids(model_path: Path, prompt: list[int], steps: int = 20) -> list[int]:
    """Free-running greedy decode in onnxruntime with the KV cache (empty past first)."""
    import numpy as np

    from keishiki._convert.run_verify import onnx_lm_forced, onnx_lm_shape, ort_session

    session = ort_session(model_path)
    tokens, _ = onnx_lm_forced(
        session, np.array([prompt], dtype=np.int64), None, onnx_lm_shape(session), steps
    )
    return tokens
