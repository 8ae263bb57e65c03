"""``compare --layers``: the tiny Llama with ``layers.1.mlp.down_proj`` scaled by 1.5 in one
copy is found there, whatever the two formats; identical models pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.convert.graph_conftest import export_once, onnx_export

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

PERTURBED = "model.layers.1.mlp.down_proj.weight"
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def _copy_with(tiny_llama: Path, out: Path, change) -> Path:
    """The tiny Llama's folder with its weights (and config) edited by ``change``."""
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True)
    for name in SIDE_FILES:
        if (tiny_llama / name).is_file():
            shutil.copy2(tiny_llama / name, out / name)
    weights = load_file(str(tiny_llama / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    change(weights, config)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def _scaled(weights, _config):
    weights[PERTURBED] = weights[PERTURBED] * np.float32(1.5)


def _more_tokens(weights, config):
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = np.concatenate([weights[name], weights[name][:16]])
    config["vocab_size"] += 16


@pytest.fixture(scope="module")
def models(tiny_llama, tmp_path_factory):
    """``models(kind)``: the tiny Llama (``hf``) or its perturbed copy (``*-perturbed``) as a
    HF folder, an ONNX export, a TorchScript trace, a GGUF, or ONNX int8; built on first use."""
    root = tmp_path_factory.mktemp("layers")

    def perturbed_hf(folder: Path) -> Path:
        return _copy_with(tiny_llama, folder, _scaled)

    def onnx_of(hf: Path, key: str) -> Path:
        from keishiki._convert.onnx_export import export_causal_lm

        return export_once(key, lambda f: (export_causal_lm(hf, f), f)[1]) / "model.onnx"

    def torchscript_of(hf: Path, folder: Path) -> Path:
        from keishiki._convert import convert

        convert(hf, folder, to="torchscript", verify=False, quiet=True)
        return folder

    def gguf_of(hf: Path, path: Path) -> Path:
        from keishiki._convert import convert

        convert(hf, path, to="gguf", quant="f32", verify=False, quiet=True)
        return path

    def int8_of(onnx_file: Path, folder: Path) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        folder.mkdir()
        for name in SIDE_FILES:
            if (onnx_file.parent / name).is_file():
                shutil.copy2(onnx_file.parent / name, folder / name)
        quantize_dynamic(str(onnx_file), str(folder / "model.onnx"), weight_type=QuantType.QInt8)
        return folder / "model.onnx"

    def int4_of(onnx_file: Path, folder: Path) -> Path:
        try:  # keishiki's own int4 edge (MatMulNBits after folding the weights' Transposes)
            from keishiki._convert.onnx_quant import quantize_file
        except ImportError:
            pytest.skip("keishiki._convert.onnx_quant is not in this tree")
        folder.mkdir()
        quantize_file(onnx_file, folder / "model.onnx", "int4")
        return folder / "model.onnx"

    makers = {
        "hf": lambda: tiny_llama,
        "hf-perturbed": lambda: perturbed_hf(root / "perturbed"),
        "onnx": lambda: onnx_export(tiny_llama)[0] / "model.onnx",
        "onnx-perturbed": lambda: onnx_of(get("hf-perturbed"), "layers-onnx-perturbed"),
        "onnx-int8": lambda: int8_of(get("onnx"), root / "int8"),
        "onnx-int4": lambda: int4_of(get("onnx"), root / "int4"),
        "onnx-external": lambda: onnx_export(tiny_llama, external_data=True)[0] / "model.onnx",
        "ts": lambda: torchscript_of(tiny_llama, root / "ts"),
        "ts-perturbed": lambda: torchscript_of(get("hf-perturbed"), root / "ts-perturbed"),
        "gguf-perturbed": lambda: gguf_of(get("hf-perturbed"), root / "perturbed.gguf"),
        "more-tokens": lambda: _copy_with(tiny_llama, root / "more-tokens", _more_tokens),
    }
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = makers[kind]()
        return built[kind]

    return get


@pytest.fixture
def gguf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path_factory.getbasetemp() / "gguf-cache"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "a, b",
    [
        ("hf", "hf-perturbed"),
        ("hf", "onnx-perturbed"),
        ("onnx", "onnx-perturbed"),
        ("hf", "ts-perturbed"),
        ("ts", "onnx-perturbed"),
        ("hf", "gguf-perturbed"),
        ("onnx-perturbed", "hf"),  # the perturbed model as the reference
    ],
)
def test_perturbed_layer_is_the_first_divergence(models, gguf_cache, a, b):
    from keishiki._compare import compare_layers

    report = compare_layers(models(a), models(b))
    first = report.first_divergence
    assert first is not None and report.exit_code == 1
    # the scaled Linear itself, in A's own naming (lm. prefix for exports)
    assert first.module.endswith("model.layers.1.mlp.down_proj"), first
    assert first.module_b.endswith("model.layers.1.mlp.down_proj")
    # ×1.5 on B is 0.5 of A; ×1.5 on A is 1/3 of A; the direction is unchanged
    assert first.max_rel_diff == pytest.approx(0.5 if "perturbed" in b else 1 / 3, rel=0.01)
    assert first.cosine == pytest.approx(1.0, abs=1e-5)
    before = report.rows[: report.rows.index(first)]
    assert len(before) >= 20 and all(r.ok and r.max_rel_diff < 1e-5 for r in before)
    assert report.rtol == 1e-3 and report.a.precision == report.b.precision == "float32"


@pytest.mark.slow
@pytest.mark.parametrize(
    "a, b, backends, n_rows",
    [
        ("hf", "onnx", ("torch", "onnxruntime"), 32),
        ("hf", "ts", ("torch", "torchscript"), 32),
        ("ts", "onnx", ("torchscript", "onnxruntime"), 26),
        ("hf", "onnx-external", ("torch", "onnxruntime"), 32),
    ],
)
def test_same_model_in_two_formats_is_within_tolerance(models, a, b, backends, n_rows):
    from keishiki._compare import compare_layers

    folder_b = sorted(p.name for p in models(b).parent.iterdir())
    report = compare_layers(models(a), models(b), prompt="Hello there, how are you?")
    # ONNX outputs are marked on a copy in memory: nothing is written beside the model
    assert sorted(p.name for p in models(b).parent.iterdir()) == folder_b
    assert report.exit_code == 0 and report.first_divergence is None
    assert (report.a.backend, report.b.backend) == backends
    assert len(report.rows) == n_rows
    assert max(r.max_rel_diff for r in report.rows) < 1e-5
    assert min(r.cosine for r in report.rows) > 0.99999
    names = [r.module for r in report.rows]
    assert names[-1].endswith("lm_head")
    prefix = names[-1][: -len("lm_head")]  # "" for a HF model, "lm." for an export
    # execution order: a Linear before its layer, layer 0 before layer 1
    order = [
        names.index(prefix + n)
        for n in (
            "model.embed_tokens",
            "model.layers.0.mlp.down_proj",
            "model.layers.0",
            "model.layers.1.self_attn.q_proj",
            "model.norm",
        )
    ]
    assert order == sorted(order)


@pytest.mark.slow
@pytest.mark.parametrize(
    "quantized, precision, rtol", [("onnx-int8", "8-bit", 0.1), ("onnx-int4", "4-bit", 0.3)]
)
def test_onnx_against_its_quantization_uses_its_tolerance(models, quantized, precision, rtol):
    from keishiki._compare import compare_layers

    report = compare_layers(models("onnx"), models(quantized))
    assert (report.a.precision, report.b.precision) == ("float32", precision)
    assert report.rtol == rtol and precision in report.rtol_source
    assert report.exit_code == 0
    worst = max(r.max_rel_diff for r in report.rows)
    assert 1e-3 < worst < rtol  # quantization error, not rounding, yet within the bound
    # the same value names pair (ONNX Runtime keeps each MatMul's output name); the rotary
    # embedding, whose no-op Casts the int4 tool drops, pairs cos with cos by value
    q = next(r for r in report.rows if r.module.endswith("layers.0.self_attn.q_proj"))
    assert q.name_a == q.name_b
    rotary = [r for r in report.rows if r.module.endswith("rotary_emb")]
    assert rotary and all(r.max_abs_diff < 1e-6 for r in rotary)
    strict = compare_layers(models("onnx"), models(quantized), rtol=1e-3)
    assert strict.exit_code == 1 and strict.rtol_source == "given"


@pytest.mark.slow
def test_cli_table_and_json(models):
    code, out, err = run_cli("compare", models("hf"), models("onnx-perturbed"), "--layers")
    assert code == 1, err
    text = " ".join(out.split())  # rich wraps at the terminal's width
    assert "verdict: diverged" in text and "first at model.layers.1.mlp.down_proj (rel 0.5" in text
    code, out, err = run_cli(
        "compare", models("hf"), models("hf"), "--layers", "--json", "--prompt", "a b c"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "keishiki.compare.layers/1"
    assert doc["verdict"] == "within tolerance" and doc["first_divergence"] is None
    assert doc["prompt"] == "a b c" and doc["n_over_tolerance"] == 0
    assert all(
        row["max_abs_diff"] == 0 and row["cosine"] == pytest.approx(1.0) for row in doc["layers"]
    )
    assert doc["a"]["backend"] == "torch" and doc["a"]["precision"] == "float32"


@pytest.mark.parametrize(
    "make_b, message",
    [
        (lambda m, root: root / "model.safetensors", "cannot compare layers"),
        (lambda m, root: m("more-tokens"), "vocabularies differ: A has"),
        (lambda m, root: root / "missing", "no such file or folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(models, tiny_llama, make_b, message):
    code, out, err = run_cli("compare", tiny_llama, make_b(models, tiny_llama), "--layers")
    assert code == 2, out
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_the_load_gate_applies(models, tmp_path):
    """A TorchScript archive whose code reads a file is refused (exit 1, unsafe) unless
    trusted, as ``keishiki run`` refuses it."""
    import zipfile

    evil_dir = tmp_path / "evil"
    shutil.copytree(models("ts"), evil_dir)
    evil = evil_dir / "model.pt"
    evil.unlink()
    with zipfile.ZipFile(models("ts") / "model.pt") as src, zipfile.ZipFile(evil, "w") as out:
        for item in src.infolist():
            out.writestr(item, src.read(item))
        root = src.namelist()[0].split("/")[0]
        out.writestr(
            f"{root}/code/__torch__/evil.py",
            "def f(x: Tensor) -> Tensor:\n  return torch.from_file('/etc/passwd')\n",
        )
    code, _out, err = run_cli("compare", models("hf"), evil_dir, "--layers")
    assert code == 1 and "unsafe" in err and "compare layers" in err, err
    code, _out, err = run_cli("compare", models("hf"), evil_dir, "--layers", "--trust-remote-code")
    assert code == 0, err


def test_negative_tolerance_and_two_modes_are_refused(tiny_llama):
    code, _out, err = run_cli("compare", tiny_llama, tiny_llama, "--layers", "--rtol", "-1")
    assert code == 2 and "--rtol must be >= 0, got -1.0" in err
    code, _out, err = run_cli("compare", tiny_llama, tiny_llama, "--layers", "--atol", "nan")
    assert code == 2 and "--atol must be >= 0, got nan" in err
    code, _out, err = run_cli("compare", tiny_llama, tiny_llama, "--layers", "--outputs")
    assert code == 2 and "choose one" in err


def test_escaping_values_and_scope_names():
    """The scope analysis on a hand-made graph: a value read outside its module is that
    module's output (and its parents' when it leaves them too); a Cast of the module's
    own input is not."""
    from keishiki._compare.intermediates import (
        escaping_values,
        hierarchy_parts,
        onnx_scope_chain,
        precision_of_dtypes,
    )

    assert onnx_scope_chain("/lm/model/layers.0/mlp/down_proj/MatMul") == (
        "lm",
        "lm.model",
        "lm.model.layers.0",
        "lm.model.layers.0.mlp",
        "lm.model.layers.0.mlp.down_proj",
    )
    assert onnx_scope_chain("Constant_12") == ()
    assert onnx_scope_chain(
        "node_5", {"pkg.torch.onnx.name_scopes": "['', 'model', 'model.norm', 'mul_3']"}
    ) == ("model", "model.norm")
    assert hierarchy_parts("lm(LlamaForCausalLM).model(LlamaModel).0(LlamaDecoderLayer)") == [
        "lm",
        "model",
        "0",
    ]
    mlp, down = ("m", "m.mlp"), ("m", "m.mlp", "m.mlp.down")
    nodes = [(mlp, ["cast"]), (down, ["mm"]), (mlp, ["act"]), (("m",), ["add"])]
    consumers = {"cast": [1], "mm": [2], "act": [3]}
    out = escaping_values(nodes, consumers, {"add"}, forwarded={0: None})
    assert out == {"m.mlp.down": [("mm", 1)], "m.mlp": [("act", 2)], "m": [("add", 3)]}
    assert precision_of_dtypes(["float32", "q8_0", "q4_K"]) == "4-bit"
    assert precision_of_dtypes(["float32", "float16"]) == "float16"
    assert precision_of_dtypes(["iq2_xs"]) == precision_of_dtypes(["tq1_0"]) == "2-bit"


@pytest.mark.parametrize(
    "a, b, ok",
    [
        ([np.inf, 1.0], [-np.inf, 1.0], False),  # opposite infinities
        ([np.nan, 1.0], [np.inf, 1.0], False),
        ([np.inf, 1.0], [1.0, 1.0], False),
        ([np.inf, 1.0], [np.inf, 1.0], True),
        ([-np.inf, np.nan, 1.0], [-np.inf, np.nan, 1.0], True),
    ],
)
def test_diff_arrays_non_finite_must_match(a, b, ok):
    from keishiki._compare.layers import diff_arrays

    assert diff_arrays(np.array(a), np.array(b), 1e3, 1e3)[3] is ok


def test_diff_arrays_nan_and_zero():
    from keishiki._compare.layers import diff_arrays

    a = np.array([1.0, 2.0, np.nan], np.float32)
    assert diff_arrays(a, a.copy(), 0, 0) == (0.0, 0.0, pytest.approx(1.0), True)
    b = a.copy()
    b[0] = np.nan
    max_abs, rel, _cos, ok = diff_arrays(a, b, 1.0, 1.0)
    assert not ok and max_abs == float("inf")
    zeros = np.zeros(4, np.float32)
    assert diff_arrays(zeros, zeros + 1e-7, 1e-6, 0)[3] is True
    assert diff_arrays(zeros, zeros + 1e-3, 1e-6, 0.5)[3] is False
