"""Run both sides and compare: the source model and the converted graph on the same inputs.

For causal LMs the source (PyTorch, eager) runs a greedy loop of ``steps`` tokens from fixed
seed token ids; the result is fed the same tokens (ONNX: one step at a time with its KV cache,
empty past first; TorchScript: its cache when it has one, else one causal pass over the prompt
and the tokens, whose position p gives step p's logits).  At
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
from .onnx_export import quietly

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


def kv_lm_forced(
    step_fn: Callable[[dict], dict],
    prompt: np.ndarray,
    tokens: Sequence[int] | None,
    shape: dict[str, int],
    kv_dtype=np.float32,
    steps: int = VERIFY_STEPS,
):
    """Feed ``prompt`` then ``tokens`` through a flat KV-cache model one step at a time.

    ``step_fn(feed) -> {output name: array}`` runs the model (ORT session or TorchScript).
    Returns (argmax per step, last-position logits per step).  Step 0 runs the whole prompt
    with an empty past (past length 0), each later step one token with the presents as past.
    ``tokens=None`` runs free greedy for ``steps`` steps (each step feeds its own argmax).
    """
    n_steps = len(tokens) if tokens is not None else steps
    past = {
        f"past_key_values.{i}.{k}": np.zeros(
            (1, shape["kv_heads"], 0, shape["head_dim"]), dtype=kv_dtype
        )
        for i in range(shape["n_layers"])
        for k in ("key", "value")
    }
    inp = prompt
    total = 0
    argmaxes, logits_steps = [], []
    for step in range(n_steps):
        seq = inp.shape[1]
        feed = {
            "input_ids": inp,
            "attention_mask": np.ones((1, total + seq), dtype=np.int64),
            "position_ids": np.arange(total, total + seq, dtype=np.int64)[None, :],
            **past,
        }
        outs = step_fn(feed)
        last = np.asarray(outs["logits"][:, -1, :], dtype=np.float32)
        logits_steps.append(last)
        argmaxes.append(int(last[0].argmax()))
        for name in past:
            past[name] = outs[name.replace("past_key_values", "present")]
        total += seq
        nxt = tokens[step] if tokens is not None else argmaxes[-1]
        inp = np.array([[nxt]], dtype=np.int64)
    return argmaxes, logits_steps


def onnx_lm_shape(session) -> dict[str, int]:
    """n_layers, kv_heads, head_dim, vocab read from a KV-cache session's input/output specs."""
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    logits = next(o for o in session.get_outputs() if o.name == "logits")
    first = pasts[0].shape if pasts else [None, 1, None, 1]
    vocab = logits.shape[-1]
    return {
        "n_layers": len(pasts) // 2,
        "kv_heads": int(first[1]),
        "head_dim": int(first[3]),
        "vocab": vocab if isinstance(vocab, int) else 2,
    }


def onnx_lm_forced(
    session,
    prompt: np.ndarray,
    tokens: Sequence[int] | None,
    shape: dict[str, int],
    steps: int = VERIFY_STEPS,
):
    """:func:`kv_lm_forced` through an onnxruntime session (``tokens=None``: free greedy)."""
    in_names = {i.name for i in session.get_inputs()}
    out_names = [o.name for o in session.get_outputs()]

    def step(feed):
        feed = {k: v for k, v in feed.items() if k in in_names}
        return dict(zip(out_names, session.run(None, feed)))

    return kv_lm_forced(step, prompt, tokens, shape, _ort_float_type(session), steps)


def _ort_float_type(session):
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(
                i.type, np.float32
            )
    return np.float32


def ort_session(path: Path):
    """A CPU onnxruntime InferenceSession of ``path`` (one thread pool, quiet logging)."""
    ort = require("onnxruntime", purpose="run the ONNX model")
    ort.set_default_logger_severity(4)  # run errors become exceptions; no colored log lines
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_lm(
    reference: tuple[list[int], list[np.ndarray]],
    result_fn: Callable[[list[int]], tuple[list[int], list[np.ndarray]]],
    atol: float,
    rtol: float = 0.0,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Compare a reference greedy run with ``result_fn(tokens)`` (teacher-forced result)."""
    ref_tokens, ref_logits = reference
    got_tokens, got_logits = result_fn(ref_tokens)
    diff = _Diff()
    for got, ref in zip(got_logits, ref_logits):
        diff.add(got, ref)
    first_divergence = next(
        (i for i, (a, b) in enumerate(zip(got_tokens, ref_tokens)) if a != b), None
    )
    tokens_match = first_divergence is None
    within = diff.max_abs <= atol + rtol * diff.ref_max
    return {
        "method": "run-both",
        "passed": bool(tokens_match and within),
        "max_abs_diff": diff.max_abs,
        "max_rel_diff": diff.max_rel,
        "atol": atol,
        "rtol": rtol,
        "dtype": dtype,
        "steps": len(ref_tokens),
        "tokens_match": tokens_match,
        "first_divergence": first_divergence,
        "reference_tokens": list(ref_tokens),
        "result_tokens": list(got_tokens),
        "prompt_len": PROMPT_LEN,
        "seed": SEED,
    }


RUN_BOTH_STEPS = 3  # loading the source, running it, running the result (``advance``)


@quietly
def verify_onnx_lm(
    model_dir: Path,
    onnx_path: Path,
    atol: float | None = None,
    rtol: float = 0.0,
    steps: int = VERIFY_STEPS,
    advance: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Run the HF model (PyTorch) and the exported KV-cache ONNX model; compare (see module doc).
    ``advance(n, description)`` as each of the :data:`RUN_BOTH_STEPS` begins.

    Returns:
        The verify dict: ``passed``, ``max_abs_diff``, ``max_rel_diff``, ``tokens_match``,
        ``first_divergence``, both token lists, ``atol``, ``seconds``.
    """
    from .onnx_export import _stepper, load_causal_lm, model_shape

    started = time.perf_counter()
    step = _stepper(advance)
    step("loading the source")
    model = load_causal_lm(Path(model_dir))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    shape = model_shape(model.config)
    prompt = seed_token_ids(shape["vocab"])
    step("running the source (PyTorch)")
    reference = torch_greedy(model, prompt, steps)
    step("running the result (onnxruntime)")
    try:
        session = ort_session(onnx_path)
        onnx_dtype = _onnx_weight_dtype(session)
        atol = atol if atol is not None else max(default_atol(dtype), default_atol(onnx_dtype))
        report = compare_lm(
            reference,
            lambda toks: onnx_lm_forced(session, prompt, toks, shape),
            atol,
            rtol,
            onnx_dtype,
        )
    except Exception as exc:  # ORT's own error types: an op without a kernel for this dtype
        hint = (
            " (onnxruntime's CPU kernels lack bfloat16 for some ops: export float16, or "
            "pass verify=False and run it on a GPU provider)"
            if _has_bfloat16(onnx_path)
            else ""
        )
        return {
            "method": "run-both",
            "passed": False,
            "reason": f"onnxruntime cannot run the result: {_first_line(exc)}{hint}",
            "seconds": round(time.perf_counter() - started, 3),
        }
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _has_bfloat16(onnx_path: Path) -> bool:
    onnx = require("onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.BFLOAT16 for t in model.graph.initializer)


def _onnx_weight_dtype(session) -> str:
    t = _ort_float_type(session)
    return {np.float16: "float16", np.float64: "float64"}.get(t, "float32")


def onnx_is_causal_lm(onnx_path: Path) -> bool:
    """True when the graph has the KV-cache LM layout (input_ids + logits)."""
    session = ort_session(onnx_path)
    return {"input_ids"} <= {i.name for i in session.get_inputs()} and "logits" in {
        o.name for o in session.get_outputs()
    }


def _to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def torchscript_lm_forced(ts_module, meta: dict, prompt: np.ndarray, tokens: Sequence[int]):
    """Teacher-forced greedy through a traced LM: one pass over prompt + forced tokens, or its
    KV cache one step at a time."""
    torch = require("torch")
    if meta.get("kv_cache"):
        names = meta["output_names"]
        order = meta["input_names"]
        kv_dtype = np.float16 if meta.get("dtype") == "float16" else np.float32  # bf16 → f32

        def step(feed):
            with torch.no_grad():
                outs = ts_module(
                    *[
                        torch.from_numpy(np.ascontiguousarray(feed[n])).to(
                            _kv_torch_dtype(meta) if n.startswith("past") else None
                        )
                        for n in order
                    ]
                )
            return {n: _to_numpy(o) for n, o in zip(names, outs)}

        return kv_lm_forced(step, prompt, tokens, meta, kv_dtype)
    # teacher-forced without a cache: step i's logits are those at position prompt + i - 1 of
    # one causal pass over the prompt and the forced tokens (a causal LM's position p sees
    # only tokens <= p), so one pass gives every step instead of recomputing each prefix
    forced = np.array([list(tokens[:-1])], dtype=np.int64).reshape(1, -1)
    ids = np.concatenate([prompt, forced], axis=1)
    with torch.no_grad():
        logits = _to_numpy(ts_module(torch.from_numpy(ids))).astype(np.float32)
    start = prompt.shape[1] - 1
    logits_steps = [logits[:, start + i, :] for i in range(len(tokens))]
    return [int(step[0].argmax()) for step in logits_steps], logits_steps


def _kv_torch_dtype(meta: dict):
    torch = require("torch")
    return getattr(torch, meta.get("dtype") or "float32")


@quietly
def verify_torchscript_lm(
    model_dir: Path,
    pt_path: Path,
    atol: float | None = None,
    rtol: float = 0.0,
    steps: int = VERIFY_STEPS,
    dtype: str | None = None,
    advance: Callable[..., None] | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """Run the HF model (eager) and the TorchScript archive greedily; compare logits and tokens
    (``advance(n, description)`` as each of the :data:`RUN_BOTH_STEPS` begins).  ``model``:
    the HF model already loaded from ``model_dir`` as :func:`.onnx_export.load_causal_lm`
    loads it (the export's), instead of loading it again."""
    torch = require("torch")
    from .onnx_export import _stepper, load_causal_lm, model_shape
    from .torchscript_export import read_meta

    started = time.perf_counter()
    step = _stepper(advance)
    step("loading the source")
    model = model if model is not None else load_causal_lm(Path(model_dir))
    shape = model_shape(model.config)
    prompt = seed_token_ids(shape["vocab"])
    step("running the source (PyTorch)")
    reference = torch_greedy(model, prompt, steps)
    step("running the result (TorchScript)")
    meta = {**shape, **read_meta(Path(pt_path))}
    meta.setdefault("dtype", dtype or "float32")
    ts_module = torch.jit.load(str(pt_path), map_location="cpu").eval()
    src_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    atol = atol if atol is not None else max(default_atol(src_dtype), default_atol(meta["dtype"]))
    report = compare_lm(
        reference,
        lambda toks: torchscript_lm_forced(ts_module, meta, prompt, toks),
        atol,
        rtol,
        meta["dtype"],
    )
    report["kv_cache"] = bool(meta.get("kv_cache"))
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def compare_outputs(
    got: Sequence[np.ndarray], ref: Sequence[np.ndarray], atol: float, rtol: float = 0.0
) -> dict[str, Any]:
    """Compare output lists of a non-LM graph: max abs/rel diff, exact shapes, pass flag."""
    diff = _Diff()
    problems = []
    if len(got) != len(ref):
        problems.append(f"{len(got)} outputs vs {len(ref)}")
    for i, (a, b) in enumerate(zip(got, ref)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            problems.append(f"output {i}: shape {a.shape} vs {b.shape}")
            continue
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            diff.add(a, b)
        elif not np.array_equal(a, b):
            problems.append(f"output {i}: integer/bool values differ")
    within = diff.max_abs <= atol + rtol * diff.ref_max
    return {
        "method": "run-both",
        "passed": bool(within and not problems),
        "max_abs_diff": diff.max_abs,
        "max_rel_diff": diff.max_rel,
        "atol": atol,
        "rtol": rtol,
        "n_outputs": len(ref),
        "problems": problems,
    }


def verify_torchscript_module(
    module, pt_path: Path, example_input: str | None, atol: float | None = None, rtol: float = 0.0
) -> dict[str, Any]:
    """Run the eager module and the archive on the example input and a second seeded input.

    Without an example input (``--method script`` needs none to export) there is nothing to
    run them on: the archive's state_dict is compared with the module's instead."""
    torch = require("torch")
    from .torchscript_export import make_example_tensors

    ts_module = torch.jit.load(str(pt_path), map_location="cpu").eval()
    if example_input is None:
        return _compare_state_dicts(module.state_dict(), ts_module.state_dict())
    got, ref = [], []
    with torch.no_grad():
        for seed in (0, 1):
            inputs = make_example_tensors(example_input, seed=seed)
            got += _flatten_outputs(ts_module(*inputs))
            ref += _flatten_outputs(module(*inputs))
    report = compare_outputs(got, ref, 1e-5 if atol is None else atol, rtol)
    report["inputs"] = example_input
    return report


def _compare_state_dicts(ref: dict, got: dict) -> dict[str, Any]:
    """Bit-exact comparison of two state_dicts (names, shapes, values)."""
    import torch

    names = sorted(set(ref) | set(got))
    differ = [
        n
        for n in names
        if n not in ref or n not in got or not torch.equal(ref[n].detach(), got[n].detach())
    ]
    report: dict[str, Any] = {
        "method": "state-dict",
        "passed": not differ,
        "n_compared": len(names),
        "note": "no example input: weights compared, outputs not run",
    }
    if differ:
        report["reason"] = f"{len(differ)} tensor(s) differ or are missing: {differ[:5]}"
    return report


def _flatten_outputs(value) -> list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flatten_outputs(v)]
    if isinstance(value, dict):
        return [a for k in sorted(value) for a in _flatten_outputs(value[k])]
    if hasattr(value, "detach"):
        return [_to_numpy(value)]
    return [np.asarray(value)]


def verify_onnx_pair_lm(
    src_path: Path,
    out_path: Path,
    atol: float | None = None,
    rtol: float = 0.0,
    steps: int = VERIFY_STEPS,
) -> dict[str, Any]:
    """Both KV-cache ONNX LMs in ORT: free greedy on the source, teacher-forced result."""
    started = time.perf_counter()
    src_session, out_session = ort_session(src_path), ort_session(out_path)
    shape = onnx_lm_shape(src_session)
    prompt = seed_token_ids(shape["vocab"])
    reference = onnx_lm_forced(src_session, prompt, None, shape, steps)
    dtype = _onnx_weight_dtype(out_session)
    atol = atol if atol is not None else default_atol(dtype)
    report = compare_lm(
        reference, lambda toks: onnx_lm_forced(out_session, prompt, toks, shape), atol, rtol, dtype
    )
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
}


def graph_inputs(onnx_dir: Path, session, free_dim: int = 8) -> tuple[dict[str, np.ndarray], str]:
    """Inputs for a non-LM graph: ``test_data_set_0/input_*.pb`` beside it, else seeded random.

    Returns (feed, where they came from).  Unknown dims become 1 in front (batch) and
    ``free_dim`` elsewhere; floats are standard normal, integers 0 or 1 (safe as indices),
    booleans random.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    names = [i.name for i in session.get_inputs()]
    data_dir = Path(onnx_dir) / "test_data_set_0"
    files = (
        sorted(data_dir.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
        if data_dir.is_dir()
        else []
    )
    if files and len(files) == len(names):
        feed = {}
        for name, path in zip(names, files):
            tensor = onnx.TensorProto()
            tensor.ParseFromString(path.read_bytes())
            feed[name] = numpy_helper.to_array(tensor)
        return feed, str(data_dir.name)
    rng = np.random.default_rng(SEED)
    # a symbolic dim that leads some input is a batch dim wherever it appears (RNN states)
    batch_names = {
        spec.shape[0]
        for spec in session.get_inputs()
        if spec.shape and isinstance(spec.shape[0], str)
    }
    feed = {}
    for spec in session.get_inputs():
        dims = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 or d in batch_names else free_dim)
            for i, d in enumerate(spec.shape or [])
        ]
        dtype = ORT_NUMPY.get(spec.type)
        if dtype is None:
            raise ValueError(f"input {spec.name!r} has type {spec.type}")
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feed[spec.name] = rng.integers(0, 2, dims).astype(dtype)
    return feed, f"random (seed 0, free dims {free_dim})"


def verify_onnx_pair_graph(
    src_path: Path, out_path: Path, atol: float | None = None, rtol: float = 0.0
) -> dict[str, Any]:
    """Run the source and result graphs in ORT on the same inputs; compare every output.

    When ORT cannot run the source (an opset or op it lacks), the result is only checked
    with ``onnx.checker`` and the verdict says so (``method: checker-only``).
    """
    onnx = require("onnx")
    started = time.perf_counter()
    ort = require("onnxruntime")
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        src_session = ort_session(src_path)
        # random inputs: small free dims first, then audio-sized ones (a model may need a
        # minimum length, e.g. a reflect pad)
        for free_dim in (8, 512):
            feed, origin = graph_inputs(Path(src_path).parent, src_session, free_dim)
            try:
                ref = src_session.run(None, feed, quiet)
                break
            except Exception:  # ORT's own exception types; retried with larger dims
                if free_dim == 512 or not origin.startswith("random"):
                    raise
    except Exception as exc:  # ORT raises its own exception types for unsupported models
        onnx.checker.check_model(str(out_path))
        return {
            "method": "checker-only",
            "passed": True,
            "reason": f"onnxruntime cannot run the source ({_first_line(exc)}); the "
            f"result passed onnx.checker only",
            "seconds": round(time.perf_counter() - started, 3),
        }
    try:
        got = ort_session(out_path).run(None, feed, quiet)
    except Exception as exc:
        return {
            "method": "run-both",
            "passed": False,
            "inputs": origin,
            "reason": f"onnxruntime cannot run the result: {_first_line(exc)}",
            "seconds": round(time.perf_counter() - started, 3),
        }
    report = compare_outputs(got, ref, 1e-5 if atol is None else atol, rtol)
    report.update(inputs=origin, seconds=round(time.perf_counter() - started, 3))
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
