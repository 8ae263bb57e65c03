"""Red-team cases for quantization and ``compare --layers``: what a user with real and odd
models tries.  Each case once failed or had to be checked by hand (issue 13's acceptance
pass): odd widths on every GGUF architecture keishiki writes, bad flags, odd ONNX files,
NaN/inf/huge weights, empty and 1-D tensors, two different models compared layer by layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

from .quant_fixtures import llama256  # noqa: F401  (a fixture)

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# widths that are multiples of neither 256 (k-quant blocks) nor, for 40, 32 (Q4_0..Q8_0)
ARCHS = {
    "qwen2-48": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
    ),
    "mistral-40": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            hidden_size=40,
            intermediate_size=72,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=10,
        ),
    ),
    "gemma-96": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(
            hidden_size=96,
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=24,
        ),
    ),
    "phi3-96": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            hidden_size=96,
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            original_max_position_embeddings=64,
        ),
    ),
}


@pytest.fixture(scope="module")
def odd_models(tiny_llama, tmp_path_factory):
    """name -> HF folder of a random 2-layer model of ARCHS (the tiny Llama's tokenizer,
    context 64), plus "llama" (the tiny Llama, hidden 64)."""
    root = tmp_path_factory.mktemp("odd")
    base = json.loads((tiny_llama / "config.json").read_text())
    ids = {k: base.get(k) for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    built = {"llama": tiny_llama}
    for name, (config_cls, model_cls, extra) in ARCHS.items():
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(
            num_hidden_layers=2, max_position_embeddings=64, **ids, **extra
        )
        getattr(transformers, model_cls)(config).eval().save_pretrained(root / name)
        for file in TOKENIZER_FILES:
            if (tiny_llama / file).is_file():
                shutil.copy(tiny_llama / file, root / name / file)
        built[name] = root / name
    return built


# (model, --quant as typed, the GGML types expected besides F32 norms): rows of 48/40/96
# are not whole 256-blocks, so k-quants fall back (llama.cpp's tensor_type_fallback), and
# 40 is not even a multiple of 32 (F16)
GGUF_CASES = [
    ("llama", "Q4_K_M", {"Q5_0", "Q8_0"}),
    ("qwen2-48", "q2_K", {"F16"}),  # 48 % 32 != 0: every fallback ends at F16
    ("mistral-40", "q8_0", {"F16"}),
    # 96 = 3 x 32: Q4_K -> Q5_0, the first layers' Q5_K -> Q5_1; tied embedding Q8_0
    ("gemma-96", "q4_k_s", {"Q5_0", "Q5_1", "Q8_0"}),
    ("phi3-96", "Q6_K", {"Q8_0"}),
    ("gemma-96", "q5_1", {"Q5_1", "Q8_0"}),
]


@pytest.mark.slow
@pytest.mark.parametrize("model, quant, types", GGUF_CASES)
def test_gguf_quant_on_odd_widths_writes_verifies_and_runs(
    odd_models, tmp_path, monkeypatch, model, quant, types
):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m.gguf"
    code, stdout, err = run_cli(
        "convert", odd_models[model], out, "--to", "gguf", "--quant", quant, "--json", "--quiet"
    )
    assert code == 0, err
    step = json.loads(stdout)["steps"][0]
    assert step["verify"]["passed"] and step["verify"]["n_mismatched"] == 0
    assert set(step["details"]["types"]) - {"F32"} == types
    code, text, err = run_cli("run", out, "-p", "Hello", "-n", "3", "-t", "0")
    assert code == 0 and text.strip(), err


def test_every_quant_value_gives_a_type_whose_block_divides_the_rows():
    """Every --quant (any case) on the odd widths: a type the row length fits, or F16."""
    from keishiki._convert import gguf_quant as q
    from keishiki._convert.base import GGUF_QUANTS

    names = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.0.ffn_down.weight",
        "blk.0.attn_norm.weight",
        "output.weight",
    ]
    for quant in GGUF_QUANTS:
        assert q.canonical(quant.upper()) == quant == q.canonical(quant.lower())
        if quant in ("f32", "f16", "bf16", "q8_0"):
            continue
        for width in (40, 48, 64, 96, 256):
            state = q.MixState.for_names(names, 4, 2, 1)
            for name in names:
                shape = (width,) if "norm" in name else (width * 2, width)
                got = q.tensor_type(name, shape, quant, state)
                assert (
                    got == "F32" if len(shape) == 1 else (got == "F16" or width % q.BLOCK[got] == 0)
                ), (quant, width, name, got)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "safetensors", "--quant", "q4_0"], "--quant applies to --to gguf / onnx only"),
        (["--to", "torchscript", "--quant", "int8"], "--quant applies to --to gguf / onnx only"),
        (["--to", "gguf", "--quant", "int8"], "--quant 'int8' for --to gguf: use one of"),
        (["--to", "gguf", "--quant", "Q9_0"], "--quant 'Q9_0' for --to gguf"),
        (["--to", "onnx", "--quant", "q4_K_M"], "--quant 'q4_K_M' for --to onnx: use one of"),
        (["--to", "gguf", "--quant", "q4_0", "--block-size", "32"], "--block-size applies to"),
    ],
)
def test_bad_quant_flags_are_one_line_exit_2(tiny_llama, tmp_path, args, message):
    code, _out, err = run_cli("convert", tiny_llama, tmp_path / "out.x", *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out.x").exists()


# ---- keishiki quantize on odd ONNX files -------------------------------------------------


def _onnx(path: Path, matmul: bool = True, external: bool = False) -> Path:
    """A one-node graph: ``y = x @ w`` (w 64 x 32), or ``y = relu(x + b)`` without MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if matmul:
        init = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
        nodes, dims = [helper.make_node("MatMul", ["x", "w"], ["y"])], ([2, 64], [2, 32])
    else:
        init = numpy_helper.from_array(np.ones(4, np.float32), "b")
        nodes = [helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
        dims = ([2, 4], [2, 4])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims[0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims[1])],
        [init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    return path


@pytest.mark.parametrize(
    "make, out_name, flags, message",
    [
        (
            lambda d, m: m / "model.safetensors",
            "q.onnx",
            ["--int8"],
            "a safetensors file; keishiki quantize takes an ONNX model",
        ),
        (
            lambda d, m: _onnx(d / "add.onnx", matmul=False),
            "q.onnx",
            ["--int4"],
            "no MatMul with a constant weight to quantize",
        ),
        (
            lambda d, m: _onnx(d / "ext" / "model.onnx", external=True),
            "q.onnx",
            ["--int8"],
            "needs a folder OUT",
        ),
        (
            lambda d, m: _onnx(d / "mm.onnx"),
            "q.onnx",
            ["--int4", "--block-size", "0"],
            "--block-size 0: applies to --quant int4, a power of 2 from 16 to 256",
        ),
        (
            lambda d, m: _onnx(d / "mm.onnx"),
            "q.onnx",
            ["--int4", "--block-size", "-1"],
            "--block-size -1",
        ),
        (
            lambda d, m: _onnx(d / "mm.onnx"),
            "q.onnx",
            ["--int4", "--block-size", "7"],
            "--block-size 7",
        ),
        (
            lambda d, m: _onnx(d / "mm.onnx"),
            "q.onnx",
            ["--int4", "--block-size", str(2**20)],
            "--block-size 1048576",
        ),  # was an internal RuntimeError from onnxruntime's MLAS
        (lambda d, m: _onnx(d / "mm.onnx"), "q.onnx", ["--int8", "--int4"], "exactly one of"),
        (lambda d, m: _onnx(d / "mm.onnx"), "exists.onnx", ["--int8"], "already exists"),
        (
            lambda d, m: _onnx(d / "mm.onnx"),
            "mm.onnx",
            ["--int8", "--force"],
            "refusing to write over the input",
        ),
    ],
)
def test_quantize_refusals_are_one_line_exit_2(
    tiny_llama, tmp_path, make, out_name, flags, message
):
    src = make(tmp_path, tiny_llama)
    out = tmp_path / out_name
    if out_name == "exists.onnx":
        out.write_bytes(b"keep me")
    code, _out, err = run_cli("quantize", src, out, "--quiet", *flags)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if out_name == "exists.onnx":
        assert out.read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".*pre*")), "a pre-processing leftover"


@pytest.mark.parametrize("flag", ["--int8", "--int4"])
def test_quantize_external_data_into_a_folder(tmp_path, flag):
    import onnx

    src = _onnx(tmp_path / "ext" / "model.onnx", external=True)
    out = tmp_path / "q"
    code, stdout, err = run_cli("quantize", src.parent, out, flag, "--json", "--quiet")
    assert code == 0, err
    step = json.loads(stdout)["steps"][0]
    assert step["verify"]["passed"] and step["details"]["onnx"]["n_quantized"] == 1
    assert (out / "model.onnx.data").is_file()
    assert not list(out.glob("*.pre*"))
    onnx.checker.check_model(str(out / "model.onnx"))


def test_convert_bare_safetensors_to_onnx_int8_is_a_clear_error(tiny_llama, tmp_path):
    """The GGUF made on the way safetensors -> ... -> onnx once got ``int8`` as its GGUF
    type (KeyError); now it stays lossless and the path fails where it really does."""
    code, _out, err = run_cli(
        "convert",
        tiny_llama / "model.safetensors",
        tmp_path / "o",
        "--to",
        "onnx",
        "--quant",
        "int8",
        "--quiet",
    )
    assert code == 2 and "KeyError" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1


# ---- values a quantized type cannot hold, and degenerate shapes ----------------------------


def _safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "quant, gguf_type, message",
    [
        (None, "F64", None),  # no quantization asked: a generic GGUF keeps float64
        ("f32", "F32", "a float64 weight of magnitude 1e+300, past float32's 3.4e+38"),
        ("bf16", "BF16", "past float32's 3.4e+38; BF16 would hold inf"),
        ("q8_0", "Q8_0", "past float32's 3.4e+38; Q8_0 would hold inf"),
    ],
)
def test_float64_weights_are_kept_or_refused(tmp_path, quant, gguf_type, message):
    """float64 tensors were written as F32 by default, 1e300 as inf and 1e-300 as 0, and the
    read-back said bit-exact: by default they stay F64; a type asked for refuses what
    float32 cannot hold."""
    w = np.tile(np.array([1 / 3, 1e-300, 1e300, 0.1]), (2, 8))  # rows of 32: Q8_0 blocks
    src = _safetensors(tmp_path / "w.safetensors", {"layer.weight": w})
    out = tmp_path / "w.gguf"
    args = ["--quant", quant] if quant else []
    code, _out, err = run_cli("convert", src, out, "--to", "gguf", *args, "--quiet")
    if message is None:
        assert code == 0, err
        t = gguf.GGUFReader(str(out)).tensors[0]
        assert t.tensor_type.name == gguf_type
        assert np.asarray(t.data).reshape(w.shape).tobytes() == w.tobytes()
    else:
        assert code == 2 and message in err and "layer.weight" in err, err
        assert not out.exists()


@pytest.mark.parametrize("dtype", ["bool", "uint8", "uint16", "float8_e4m3fn", "complex64"])
def test_a_dtype_gguf_cannot_hold_is_refused_by_name(tmp_path, dtype):
    """gguf's writer raised ValueError half-way ("internal error"): refused up front."""
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(8, 8), "odd": torch.zeros(8, 8).to(getattr(torch, dtype))}
    src, out = tmp_path / "m.safetensors", tmp_path / "m.gguf"
    save_file(tensors, str(src))
    code, _out, err = run_cli("convert", src, out, "--to", "gguf", "--quiet")
    assert code == 2 and err.startswith(f"keishiki: error: odd: GGUF has no type for {dtype}")
    assert not out.exists() and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "bad, quant, message",
    [
        (np.nan, "q4_0", "1 NaN/inf value(s); Q4_0 cannot hold them"),
        (np.inf, "q8_0", "1 NaN/inf value(s); Q8_0 cannot hold them"),
        (-np.inf, "q4_K_M", "1 NaN/inf value(s); Q4_K cannot hold them"),
        (np.nan, "q6_K", "Q6_K cannot hold them"),
        (1e7, "q8_0", "past float16's 65504; Q8_0 overflows its float16 block scales"),
        (1e7, "f16", "past float16's 65504; F16 rounds it to inf"),
        (np.nan, "f32", None),  # lossless types keep the value as it is
        (np.inf, "bf16", None),
        (np.nan, "f16", None),
        (1e7, "bf16", None),
    ],
)
def test_non_finite_and_huge_weights(tmp_path, bad, quant, message):
    w = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    w[1, 7] = bad
    src = _safetensors(tmp_path / "w.safetensors", {"layer.weight": w})
    out = tmp_path / "w.gguf"
    code, _out, err = run_cli("convert", src, out, "--to", "gguf", "--quant", quant, "--quiet")
    if message is None:
        assert code == 0, err
        t = gguf.GGUFReader(str(out)).tensors[0]
        got = np.asarray(t.data).reshape(-1).view(np.uint16 if quant == "bf16" else t.data.dtype)
        value = (got.astype(np.uint32) << 16).view(np.float32) if quant == "bf16" else got
        expected = (
            torch.tensor(
                bad,
                dtype=torch.bfloat16
                if quant == "bf16"
                else torch.float16
                if quant == "f16"
                else torch.float32,
            )
            .float()
            .numpy()
        )
        assert np.array_equal(value.astype(np.float32)[256 + 7], expected, equal_nan=True)
    else:
        assert code == 2 and message in err and "layer.weight" in err, err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q5_1", "q2_K", "q4_K_M", "q6_K"])
def test_empty_and_1d_tensors(tmp_path, quant):
    """A tensor with 0 rows, one with 0 columns and a 1-D one: written, read back (gguf-py's
    quantizers and dequantizers cannot reshape 0 elements; once an internal error)."""
    rng = np.random.default_rng(0)
    tensors = {
        "rows0.weight": np.zeros((0, 256), np.float32),
        "cols0.weight": np.zeros((256, 0), np.float32),
        "vec.weight": rng.standard_normal(256).astype(np.float32),
        "mat.weight": rng.standard_normal((4, 256)).astype(np.float32),
    }
    src = _safetensors(tmp_path / "odd.safetensors", tensors)
    out = tmp_path / "odd.gguf"
    code, stdout, err = run_cli(
        "convert", src, out, "--to", "gguf", "--quant", quant, "--json", "--quiet"
    )
    assert code == 0, err
    assert json.loads(stdout)["steps"][0]["verify"]["passed"]
    by_name = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert by_name["vec.weight"].tensor_type.name == "F32"
    assert [int(n) for n in by_name["rows0.weight"].shape] == [256, 0]
    assert [int(n) for n in by_name["cols0.weight"].shape] == [0, 256]


# ---- compare --layers with models that do not fit ------------------------------------------


@pytest.mark.parametrize(
    "b, prompt, message",
    [
        ("qwen2-48", None, "hidden sizes differ: A has 64, B 48"),
        ("llama", "", "the prompt '' tokenizes to nothing"),
        ("llama", "the quick brown fox " * 80, "longer than A's context of 256"),
        ("scripted", None, "torch could not run its graph"),
    ],
)
def test_compare_layers_refusals_are_one_line_exit_2(odd_models, tmp_path, b, prompt, message):
    if b == "scripted":  # a TorchScript module that is no LM: nothing to feed token ids
        seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        other = tmp_path / "seq.pt"
        torch.jit.script(seq.eval()).save(str(other))
    else:
        other = odd_models[b]
    args = ["compare", odd_models["llama"], other, "--layers"]
    code, out, err = run_cli(*args, *(["--prompt", prompt] if prompt is not None else []))
    assert code == 2 and message in err, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_compare_layers_q4_k_m_gguf_with_its_source(llama256, tmp_path, monkeypatch):  # noqa: F811
    """Real Q4_K/Q6_K tensors (rows of 256): within the documented 4-bit tolerance."""
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m.q4_K_M.gguf"
    code, _out, err = run_cli(
        "convert", llama256, out, "--to", "gguf", "--quant", "q4_K_M", "--quiet", "--no-verify"
    )
    assert code == 0, err
    code, stdout, err = run_cli("compare", llama256, out, "--layers", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["verdict"] == "within tolerance" and doc["b"]["precision"] == "4-bit"
    assert doc["rtol"] == 0.3 and len(doc["layers"]) > 20
