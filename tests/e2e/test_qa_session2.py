"""QA of the session's new features as a demanding user meets them: each test is a finding
that failed before its fix (logprobs / next_token_logits edges, the TorchScript gate, …)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.conftest import corpus_path, count_calls, run_cli

torch = pytest.importorskip("torch")


# -- the TorchScript gate: the scanner reads code as torch.jit.load parses it --------------


class _ReadsFile(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file("/nonexistent-keishiki-qa", False, 4, dtype=torch.uint8)
        return x + y.sum()


class _Plain(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _rewrite_code(src: Path, dst: Path, edit) -> Path:
    """Copy a TorchScript archive, passing each ``code/*.py`` member's text through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = edit(data.decode()).encode()
            zout.writestr(info, data)
    return dst


@pytest.fixture(scope="module")
def file_op_ts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ts") / "reads_file.pt"
    torch.jit.save(torch.jit.script(_ReadsFile()), str(out))
    return out


@pytest.mark.parametrize(
    "layout",
    [
        "torch . from_file",
        "torch.\\\n        from_file",
        "(torch).from_file",
        "((torch)).from_file",
    ],
)
def test_scan_sees_a_file_op_whatever_its_layout(file_op_ts, tmp_path, layout):
    from keishiki import scan

    hidden = _rewrite_code(
        file_op_ts, tmp_path / "hidden.pt", lambda text: text.replace("torch.from_file", layout)
    )
    torch.jit.load(str(hidden))  # torch parses it: the call is real
    report = scan(hidden)
    assert report.verdict == "dangerous"
    assert any(f.global_ == "torch.from_file" for f in report.findings)


@pytest.mark.timeout(120)  # these take ~3 s; only a hang (a quadratic regex) reaches it
@pytest.mark.parametrize(
    "code",
    [
        "def forward(self, x):\n  y = "
        + "(" * 200_000
        + "torch"
        + ")" * 200_000
        + ".from_file(x)\n",
        "def forward(self, x):\n  y = " + "(" * 200_000 + "1" + ")" * 200_000 + "\n",
        "def forward(self, x):\n  y = torch" + " " * 400_000 + "x\n",
    ],
)
def test_code_reading_is_linear_in_hostile_nesting(code):
    """Deep parentheses and long blank runs: one pass each (the first attempt took minutes).
    Python-level work is counted (about 11.5 calls a character, linear); a quadratic regex
    runs in one call, so the timeout catches that (~6 minutes for these 400 000 blanks)."""
    from keishiki._scan.torchscript import code_findings

    with count_calls() as work:
        found = code_findings("code/__torch__.py", code)
    assert work.calls < 30 * len(code)
    # Python's parser (TorchScript's code is Python syntax) refuses 200 000 nested
    # parentheses and a name split by blanks: code that does not parse is dangerous
    assert [(f[0], f[1]) for f in found] == [("dangerous", "unparseable-code")]


def test_run_refuses_a_file_op_behind_spaces(file_op_ts, tmp_path, tiny_llama):
    hidden = _rewrite_code(
        file_op_ts,
        tmp_path / "hidden.pt",
        lambda text: text.replace("torch.from_file", "torch . from_file"),
    )
    code, out, err = run_cli(
        "run", hidden, "--tokenizer", tiny_llama, "-p", "hi", "--backend", "torchscript"
    )
    assert code == 1 and "from_file" in err and "--trust-remote-code" in err


def test_scan_ignores_file_ops_named_in_comments_and_strings(tmp_path):
    from keishiki import scan

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(_Plain()), str(plain))
    noted = _rewrite_code(
        plain,
        tmp_path / "noted.pt",
        lambda text: text.replace(
            "return torch.add(x, 1)",
            '# never torch.load(x) here\n    _0 = "torch.from_file"\n    return torch.add(x, 1)',
        ),
    )
    torch.jit.load(str(noted))
    assert (
        scan(noted).verdict == "safe"
    )  # every call allowlisted; comments and strings call nothing


# -- run on a TorchScript file that is not a causal LM: one line, exit 2 -------------------


@pytest.mark.parametrize(
    "rel",
    [
        "torchscript/torch-1.13.1-debian/tinynet_scripted.pt",
        "torchscript/silero-vad-6.2.3/silero_vad.jit",
    ],
)
def test_run_non_lm_torchscript_is_one_line(rel, tiny_llama):
    path = corpus_path(rel)
    code, out, err = run_cli("run", path, "--tokenizer", tiny_llama, "-p", "hi", "-n", "1")
    assert code == 2, err
    assert "not a causal LM" in err and err.count("\n") == 1 and "internal error" not in err


# -- token ids the user passes in -----------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tiny_llama):
    from keishiki import LLM

    return LLM(model=str(tiny_llama), backend="torch")


def test_negative_prompt_token_id_is_refused(llm):
    from keishiki import SamplingParams
    from keishiki.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="token id -3 outside"):
        llm.generate({"prompt_token_ids": [5, -3]}, SamplingParams(max_tokens=1))


@pytest.mark.parametrize("ids", ["abc", [1.7], [True, 2]])
def test_next_token_logits_wants_integer_ids(llm, ids):
    from keishiki.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="integer token ids"):
        llm.next_token_logits(ids)


def test_next_token_logits_stops_at_the_context(llm, monkeypatch):
    from keishiki.errors import InvalidRequest

    assert llm._engine.max_model_len == 256  # the tiny Llama's max_position_embeddings
    with pytest.raises(InvalidRequest, match="at most 256"):
        llm.next_token_logits([5] * 257)
    monkeypatch.setattr(llm._engine, "max_model_len", 8)  # the limit itself is allowed
    assert llm.next_token_logits([5] * 8).shape == (8, 384)
    with pytest.raises(InvalidRequest, match="9 token ids to score; the model takes at most 8"):
        llm.next_token_logits([5] * 9)


# -- BatchNorm folds: the dynamo exporter, unusual eps, ConvTranspose, unfolded BatchNorms ---


def _bn_model(kind: str):
    nn = torch.nn
    torch.manual_seed(0)
    model = {
        "conv": lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False),
            nn.BatchNorm2d(8),
        ),
        "eps": lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.BatchNorm2d(8, eps=1e-6),
            nn.Conv2d(8, 8, 3),
            nn.BatchNorm2d(8, eps=0.01),
        ),
        "plain": lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, affine=False)
        ),
        "transpose": lambda: nn.Sequential(nn.ConvTranspose2d(3, 8, 3), nn.BatchNorm2d(8)),
        "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16)),
    }[kind]()
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            if mod.affine:
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-1, 1)
    return model.eval()


@pytest.fixture(scope="module")
def bn_exports(tmp_path_factory):
    """{(kind, dynamo): (checkpoint, onnx)}, exported once."""
    pytest.importorskip("onnx")
    import warnings

    folder = tmp_path_factory.mktemp("bn")
    out = {}
    for kind, dynamo in [
        ("conv", True),
        ("eps", False),
        ("plain", False),
        ("transpose", True),
        ("linear", False),
    ]:
        model = _bn_model(kind)
        ckpt = folder / f"{kind}.pt"
        torch.save(model.state_dict(), ckpt)
        onnx_file = folder / f"{kind}_{dynamo}.onnx"
        x = torch.randn(2, 3, 2, 2) if kind == "linear" else torch.randn(1, 3, 8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                pytest.importorskip("onnxscript")
                torch.onnx.export(model, (x,), str(onnx_file), dynamo=True, verbose=False)
            else:
                torch.onnx.export(model, (x,), str(onnx_file), dynamo=False)
        out[kind, dynamo] = ckpt, onnx_file
    return out


@pytest.mark.parametrize(
    "kind,dynamo,eps",
    [
        ("conv", True, {1e-5}),  # folded values kept under the conv's own names
        ("eps", False, {1e-6, 0.01}),  # eps outside the defaults, told apart from 1e-5
        ("plain", False, {1e-5}),  # no conv bias, no affine part: the bias is from the mean
        ("transpose", True, {1e-5}),  # ConvTranspose scales its weight along dim 1
    ],
)
def test_compare_pairs_every_batchnorm_fold(bn_exports, kind, dynamo, eps):
    import json

    ckpt, onnx_file = bn_exports[kind, dynamo]
    code, out, err = run_cli("compare", ckpt, onnx_file, "--json")
    report = json.loads(out)
    assert code == 0, (report["reasons"], report["how"])
    folded = [t for t in report["tensors"] if t["how"] == "folded"]
    assert folded and {t["fold"]["eps"] for t in folded} == eps
    assert all(t["status"] == "within tolerance" for t in folded)
    assert not [u for u in report["unmatched_a"] if not u.get("not_counted")]


def test_unfolded_batchnorm_counter_is_not_a_difference(bn_exports):
    """BatchNorm1d after Linear stays a BatchNormalization node; only num_batches_tracked,
    a training counter, is missing from the ONNX file."""
    import json

    ckpt, onnx_file = bn_exports["linear", False]
    code, out, err = run_cli("map", ckpt, onnx_file, "--json")
    report = json.loads(out)
    assert code == 0 and report["n_unmatched_counted"] == 0
    counter = [u for u in report["unmatched_a"] if u["name"] == "2.num_batches_tracked"]
    assert counter and counter[0]["not_counted"] == "training counter"


# -- Torch7: functions inside a closure's upvalues are code too ----------------------------


def _t7_closure() -> bytes:
    """A binary Torch7 table {outer = function} whose upvalues hold two more functions."""
    import struct

    ints = lambda v: struct.pack("<i", v)  # noqa: E731
    memo = iter(range(1, 100))

    def string(s: str) -> bytes:
        return ints(2) + ints(len(s)) + s.encode()

    def func(upvalues: bytes = ints(0)) -> bytes:
        return ints(6) + ints(next(memo)) + ints(20) + b"\x1bLJ" + bytes(17) + upvalues

    def table(pairs) -> bytes:
        head = ints(3) + ints(next(memo)) + ints(len(pairs))
        return head + b"".join(string(k) + v() for k, v in pairs)

    return table(
        [
            (
                "outer",
                lambda: func(
                    table([("inner", func), ("deep", lambda: func(table([("x", func)])))])
                ),
            )
        ]
    )


def test_scan_lists_lua_functions_in_upvalues(tmp_path):
    import json

    path = tmp_path / "closure.t7"
    path.write_bytes(_t7_closure())
    code, out, err = run_cli("scan", path, "--json")
    names = [f["global"] for fr in json.loads(out)["files"] for f in fr["findings"]]
    assert names == [
        "outer",
        "outer.<upvalues>.inner",
        "outer.<upvalues>.deep",
        "outer.<upvalues>.deep.<upvalues>.x",
    ]
    code, out, err = run_cli("info", path, "--json")
    assert json.loads(out)["torch7"]["n_functions"] == 4


# -- scan: a safetensors header length whose first byte is 0x80 is not a pickle --------------


@pytest.mark.parametrize("header_len", [128, 384, 1408])
def test_scan_safetensors_with_pickle_like_length(tmp_path, header_len):
    """A header of 128 + 256·k bytes (k ≤ 5) makes the file start with 80 0k, a pickle
    PROTO opcode; the safetensors library writes such files for small models."""
    import json
    import struct

    import numpy as np

    data = np.arange(4, dtype=np.float32).tobytes()
    header = {
        "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]},
        "__metadata__": {"pad": ""},
    }
    text = json.dumps(header).encode()
    header["__metadata__"]["pad"] = "x" * (header_len - len(text))
    text = json.dumps(header).encode()
    assert len(text) == header_len
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", header_len) + text + data)
    assert path.read_bytes()[0] == 0x80
    code, out, err = run_cli("scan", path)
    assert code == 0 and "verdict: safe" in out, out + err


# -- prompt_logprobs on engines without a KV cache: one forward, not one per token ---------


@pytest.fixture(scope="module")
def no_cache_exports(tiny_llama, tmp_path_factory):
    """{backend: folder} of the tiny Llama as TorchScript (plain trace) and ONNX, both
    ``ids[, mask] -> logits`` without a cache."""
    import shutil
    import warnings

    pytest.importorskip("onnxruntime")
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("nocache")
    code, out, err = run_cli("convert", tiny_llama, root / "ts", "--to", "torchscript")
    assert code == 0, err
    onnx_dir = root / "onnx"
    onnx_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(tiny_llama / name, onnx_dir / name)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    ids = torch.tensor([[5, 6, 7, 8]])
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(),
            (ids, torch.ones_like(ids)),
            str(onnx_dir / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
            dynamo=False,
        )
    return {"torchscript": root / "ts", "onnxruntime": onnx_dir}


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_no_cache_scoring_is_one_forward(no_cache_exports, llm, backend, monkeypatch):
    import numpy as np

    from keishiki import LLM, SamplingParams

    engine = LLM(model=str(no_cache_exports[backend]), backend=backend)
    assert "no KV cache" in engine.backend_reason
    steps = []
    original = engine._engine._forward
    monkeypatch.setattr(
        engine._engine, "_forward", lambda *args: steps.append(1) or original(*args)
    )
    ids = list(range(3, 203))
    rows = engine.next_token_logits(ids)
    assert len(steps) <= 1  # was one recomputed prefix per token: O(n²), 46 s for 250
    assert np.abs(rows - llm.next_token_logits(ids)).max() < 1e-4
    out = engine.generate(
        {"prompt_token_ids": ids[:20]},
        SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=2),
    )[0]
    ref = llm.generate(
        {"prompt_token_ids": ids[:20]},
        SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=2),
    )[0]
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    for got, want in zip(out.prompt_logprobs[1:], ref.prompt_logprobs[1:]):
        assert got.keys() == want.keys()
        assert all(abs(got[t].logprob - want[t].logprob) < 1e-4 for t in got)


# -- keishiki run: --prompt-logprobs is shown without --json, each prompt's numbers labelled -


def test_run_prints_prompt_logprobs_and_labels_prompts(tiny_llama):
    code, out, err = run_cli(
        "run",
        tiny_llama,
        "-p",
        "Hello world",
        "-p",
        "hi",
        "-t",
        "0",
        "-n",
        "2",
        "--prompt-logprobs",
        "1",
        "--logprobs",
        "0",
    )
    assert code == 0, err
    assert "--- prompt logprobs of prompt 0\n" in out
    assert "--- prompt logprobs of prompt 1\n" in out
    assert "--- logprobs of prompt 1 (cumulative" in out
    section = out.split("--- prompt logprobs of prompt 0\n")[1].split("---")[0].splitlines()
    assert "(first token: nothing before it)" in section[0]
    assert len(section) == 5 and all(" rank " in line for line in section[1:])  # Hel|lo| w|or|ld


def test_run_refuses_torchscript_the_scanner_could_not_read(file_op_ts, tmp_path, tiny_llama):
    """A 40 MB comment after the code deflates 1000:1: the scanner refuses the member as a
    zip bomb, torch.jit.load reads it, and from_file would run."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(file_op_ts) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                zout.writestr(
                    info.filename,
                    data + b"\n" + b"#" * (40 << 20) + b"\n",
                    compress_type=zipfile.ZIP_DEFLATED,
                    compresslevel=9,
                )
            else:
                zout.writestr(info, data)
    # a fresh process, as a user runs it: the gate scans before torch is imported, so the
    # archive is read by keishiki's miniz reader alone (in a process that has torch loaded,
    # torch's reader is asked too and the refusal names the differential instead)
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keishiki",
            "run",
            str(bomb),
            "--tokenizer",
            str(tiny_llama),
            "-p",
            "hi",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr
    assert proc.returncode == 1 and "1 of 1 code files could not be read" in err, err
    assert "torch.jit.load would compile them unjudged" in err and err.count("\n") == 1


def test_negative_seed_is_a_seed(llm):
    """vLLM takes any int as a seed; numpy's generator refused -1 (an internal error)."""
    from keishiki import SamplingParams

    params = SamplingParams(seed=-1, max_tokens=4)
    first = llm.generate("hi", params)[0].outputs[0].token_ids
    assert llm.generate("hi", params)[0].outputs[0].token_ids == first
    code, out, err = run_cli("run", llm.model_path, "-p", "hi", "--seed", "-1", "-n", "2")
    assert code == 0, err


@pytest.mark.parametrize("kind,dynamo", [("conv", True), ("plain", False)])
def test_compare_pairs_folds_with_the_export_as_a(bn_exports, kind, dynamo):
    """``compare model.onnx model.pt``: the BatchNorm is B's; the fold is recomputed from B."""
    import json

    ckpt, onnx_file = bn_exports[kind, dynamo]
    code, out, err = run_cli("compare", onnx_file, ckpt, "--json")
    report = json.loads(out)
    assert code == 0, (report["reasons"], report["how"])
    folded = [t for t in report["tensors"] if t["how"] == "folded"]
    assert folded and all(t["fold"]["side"] == "B" for t in folded)
    assert all(t["status"] == "within tolerance" for t in folded)
    assert not [u for u in report["unmatched_b"] if not u.get("not_counted")]
