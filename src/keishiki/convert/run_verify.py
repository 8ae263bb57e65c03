"""Run both sides and compare: the source model and the converted graph on the same inputs.

For causal LMs the source (PyTorch, eager) runs a greedy loop of ``steps`` tokens from fixed
seed token ids; the result is fed the same tokens one step at a time (ONNX: with its KV cache,
empty past first; TorchScript: the whole prefix each step, or its cache when it has one).  At
each step the result's argmax is compared with the source's token, and every step's logits
go into the max abs/rel difference.  ``tokens_match`` is then exactly "free-running greedy on
the result gives the same tokens".

Tolerances (``atol``; ``rtol`` scales with the largest reference logit): float32 1e-4,
float16 2e-2, bfloat16 1e-1 by default.  ``max_rel_diff`` is max|a-b| / max|ref|.
Non-LM ONNX graphs are run on their test inputs (``test_data_set_*/input_*.pb`` beside them)
or on seeded random inputs built from the input specs, and every output is compared.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._optional import require

DEFAULT_ATOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1, "float64": 1e-6}
VERIFY_STEPS = 20
PROMPT_LEN = 8
SEED = 0


def default_atol(dtype: str | None) -> float:
    """The default absolute logit tolerance for weights of ``dtype`` (float32 when unknown)."""
    return DEFAULT_ATOL.get(str(dtype or "float32").replace("torch.", ""), 1e-4)


def seed_token_ids(vocab: int, n: int = PROMPT_LEN, seed: int = SEED) -> np.ndarray:
    """[1, n] int64 token ids from a fixed seed (the same on every run and machine)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=(1, n), dtype=np.int64)


class _Diff:
    """Running max abs diff / max |reference| over several logit arrays."""

    def __init__(self):
        self.max_abs = 0.0
        self.ref_max = 0.0

    def add(self, got: np.ndarray, ref: np.ndarray) -> None:
        got = np.asarray(got, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise ValueError(f"shape {got.shape} vs {ref.shape}")
        self.max_abs = max(self.max_abs, float(np.max(np.abs(got - ref))) if got.size else 0.0)
        self.ref_max = max(self.ref_max, float(np.max(np.abs(ref))) if ref.size else 0.0)

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.ref_max if self.ref_max else 0.0


def torch_greedy(model, prompt: np.ndarray, steps: int = VERIFY_STEPS):
    """Greedy decode with the PyTorch model: (token ids generated, [logits per step])."""
    torch = require("torch")
    ids = torch.from_numpy(prompt)
    logits_steps, tokens = [], []
    cache = None
    with torch.no_grad():
        inp = ids
        for _ in range(steps):
            out = model(input_ids=inp, cache=cache, use_cache=True, return_dict=True)
            cache = out.cache
            last = out.logits[:, -1, :].float()
            logits_steps.append(last.numpy().copy())
            nxt = int(last.argmax(-1)[0])
            tokens.append(nxt)
            inp = torch.tensor([[nxt]])
    return tokens, logits_steps


def onnx_lm_forced(session, prompt: np.ndarray, tokens: Sequence[int], shape: dict[str, int]):
    """Feed ``prompt`` then ``tokens`` through an ORT KV-cache session one step at a time.

    Returns (argmax per step, last-position logits per step).  Step 0 runs the whole prompt
    with an empty past (past length 0), each later step one token with the presents as past.
    """
    in_names = {i.name for i in session.get_inputs()}
    kv_type = _ort_float_type(session)
    past = {f"past_key_values.{i}.{k}": np.zeros((1, shape["kv_heads"], 0, shape["head_dim"]),
                                                   dtype=kv_type)
            for i in range(shape["n_layers"]) for k in ("key", "value")}
    out_names = [o.name for o in session.get_outputs()]
    inp = prompt
    total = 0
    argmaxes, logits_steps = [], []
    for step in range(len(tokens)):
        seq = inp.shape[1]
        feed = {"input_ids": inp,
                "attention_mask": np.ones((1, total + seq), dtype=np.int64),
                "position_ids": np.arange(total, total + seq, dtype=np.int64)[None, :], **past}
        feed = {k: v for k, v in feed.items() if k in in_names}
        outs = dict(zip(out_names, session.run(None, feed)))
        last = outs["logits"][:, -1, :].astype(np.float32)
        logits_steps.append(last)
        argmaxes.append(int(last[0].argmax()))
        for name in past:
            past[name] = outs[name.replace("past_key_values", "present")]
        total += seq
        inp = np.array([[tokens[step]]], dtype=np.int64)
    return argmaxes, logits_steps


def _ort_float_type(session):
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(
                i.type, np.float32)
    return np.float32


def ort_session(path: Path):
    """A CPU onnxruntime InferenceSession of ``path`` (one thread pool, quiet logging)."""
    ort = require("onnxruntime", purpose="run the ONNX model")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_lm(reference: tuple[list[int], list[np.ndarray]],
               result_fn: Callable[[list[int]], tuple[list[int], list[np.ndarray]]],
               atol: float, rtol: float = 0.0, dtype: str = "float32") -> dict[str, Any]:
    """Compare a reference greedy run with ``result_fn(tokens)`` (teacher-forced result)."""
    ref_tokens, ref_logits = reference
    got_tokens, got_logits = result_fn(ref_tokens)
    diff = _Diff()
    for got, ref in zip(got_logits, ref_logits):
        diff.add(got, ref)
    first_divergence = next((i for i, (a, b) in enumerate(zip(got_tokens, ref_tokens)) if a != b),
                            None)
    tokens_match = first_divergence is None
    within = diff.max_abs <= atol + rtol * diff.ref_max
    return {"method": "run-both", "passed": bool(tokens_match and within),
            "max_abs_diff": diff.max_abs, "max_rel_diff": diff.max_rel,
            "atol": atol, "rtol": rtol, "dtype": dtype, "steps": len(ref_tokens),
            "tokens_match": tokens_match, "first_divergence": first_divergence,
            "reference_tokens": list(ref_tokens), "result_tokens": list(got_tokens),
            "prompt_len": PROMPT_LEN, "seed": SEED}


def verify_onnx_lm(model_dir: Path, onnx_path: Path, atol: float | None = None,
                   rtol: float = 0.0, steps: int = VERIFY_STEPS) -> dict[str, Any]:
    """Run the HF model (PyTorch) and the exported KV-cache ONNX model; compare (see module doc).

    Returns:
        The verify dict: ``passed``, ``max_abs_diff``, ``max_rel_diff``, ``tokens_match``,
        ``first_divergence``, both token lists, ``atol``, ``seconds``.
    """
    from .onnx_export import load_causal_lm, model_shape

    started = time.perf_counter()
    model = load_causal_lm(Path(model_dir))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    shape = model_shape(model.config)
    prompt = seed_token_ids(shape["vocab"])
    reference = torch_greedy(model, prompt, steps)
    session = ort_session(onnx_path)
    onnx_dtype = _onnx_weight_dtype(session)
    atol = atol if atol is not None else max(default_atol(dtype), default_atol(onnx_dtype))
    report = compare_lm(reference, lambda toks: onnx_lm_forced(session, prompt, toks, shape),
                        atol, rtol, onnx_dtype)
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _onnx_weight_dtype(session) -> str:
    t = _ort_float_type(session)
    return {np.float16: "float16", np.float64: "float64"}.get(t, "float32")


def onnx_is_causal_lm(onnx_path: Path) -> bool:
    """True when the graph has the KV-cache LM layout (input_ids + logits)."""
    session = ort_session(onnx_path)
    return ({"input_ids"} <= {i.name for i in session.get_inputs()}
            and "logits" in {o.name for o in session.get_outputs()})
