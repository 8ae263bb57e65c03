"""pytorch <-> safetensors and the generic X -> safetensors edges, checked with the reference
libraries (safetensors.safe_open, torch.load(weights_only=True))."""

from __future__ import annotations

import json

import numpy as np
import pytest

import keishiki
from keishiki.errors import InvalidRequest, UnsafeFile
from tests.conftest import corpus_path, run_cli

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_pytorch_to_safetensors_keeps_every_tensor_and_records_ties(
    pt_files, state_dict, tmp_path, kind
):
    out = tmp_path / "model.safetensors"
    report = keishiki.convert(pt_files[kind], out, to="safetensors", quiet=True)
    assert report.path == ["pytorch -> safetensors"] and report.passed
    step = report.steps[0]
    assert step.verify["library"] == "safetensors.safe_open"
    assert step.verify["n_bit_exact"] == len(state_dict)  # 7 written + 1 alias
    loaded = safetensors_torch.load_file(out)
    assert set(loaded) == set(state_dict) - {"head.weight"}  # the tie is written once
    for name, tensor in loaded.items():
        assert _equal(tensor, state_dict[name].contiguous()), name
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["keishiki.aliases"]) == {"head.weight": "emb.weight"}
    assert meta["format"] == "pt"


def test_state_dict_round_trip_is_bit_exact_and_ties_come_back(pt_files, state_dict, tmp_path):
    st = tmp_path / "m.safetensors"
    back = tmp_path / "back.pt"
    keishiki.convert(pt_files["zip"], st, to="safetensors", quiet=True)
    report = keishiki.convert(st, back, to="pytorch", quiet=True)
    assert report.passed and report.steps[0].verify["library"].startswith("torch.load")
    loaded = torch.load(back, weights_only=True)
    assert set(loaded) == set(state_dict)
    for name, tensor in state_dict.items():
        assert _equal(loaded[name], tensor.contiguous()), name
    assert loaded["head.weight"].data_ptr() == loaded["emb.weight"].data_ptr()


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 1e-2), ("float32", 0)])
def test_dtype_change_only_touches_floating_tensors(pt_files, state_dict, tmp_path, dtype, tol):
    out = tmp_path / "m.safetensors"
    report = keishiki.convert(pt_files["zip"], out, to="safetensors", dtype=dtype, quiet=True)
    assert report.passed
    loaded = safetensors_torch.load_file(out)
    assert loaded["steps"].dtype == torch.int64
    assert loaded["emb.weight"].dtype == getattr(torch, dtype)
    # the cast is torch's own rounding, bit for bit
    assert _equal(loaded["emb.weight"], state_dict["emb.weight"].to(getattr(torch, dtype)))
    diff = (loaded["lin.weight"].float() - state_dict["lin.weight"].float()).abs().max().item()
    assert diff <= tol * 10
    assert report.steps[0].verify["max_abs_diff"] == pytest.approx(
        max((loaded[n].double() - state_dict[n].double()).abs().max().item() for n in loaded),
        rel=1e-6,
        abs=1e-12,
    )


def test_checkpoint_needs_key_and_key_selects_the_state_dict(pt_files, tmp_path):
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli("convert", pt_files["ckpt"], out, "--to", "safetensors")
    assert code == 2 and "--key" in err and "model" in err and "optimizer" in err
    assert not out.exists()
    code, _, err = run_cli("convert", pt_files["ckpt"], out, "--to", "safetensors", "--key", "nope")
    assert code == 2 and "holds no tensors" in err
    keishiki.convert(pt_files["ckpt"], out, to="safetensors", key="model", quiet=True)
    loaded = safetensors_torch.load_file(out)
    assert set(loaded) == {"a.weight", "a.bias"}


def test_whole_module_pickle_weights_named_by_module_tree_without_running_it(pt_files, tmp_path):
    """A whole pickled module scans unknown (its classes' code is not the file's to vouch
    for): refused untrusted; trusted, keishiki's reader names the weights by the module tree
    and runs none of its code, and the report says so."""
    out = tmp_path / "m.safetensors"
    with pytest.raises(UnsafeFile, match="runs nothing: trust_remote_code=True takes the weights"):
        keishiki.convert(pt_files["module"], out, to="safetensors", quiet=True)
    assert not out.exists()
    report = keishiki.convert(
        pt_files["module"], out, to="safetensors", quiet=True, trust_remote_code=True
    )
    assert report.passed and report.source_scan["verdict"] == "unknown"
    assert set(safetensors_torch.load_file(out)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_safetensors_to_safetensors_bfloat16(tmp_path):
    src = tmp_path / "a.safetensors"
    safetensors_torch.save_file({"w": torch.randn(4, 4), "i": torch.arange(3)}, src)
    out = tmp_path / "b.safetensors"
    keishiki.convert(src, out, to="safetensors", dtype="bfloat16", quiet=True)
    loaded = safetensors_torch.load_file(out)
    assert loaded["w"].dtype == torch.bfloat16 and loaded["i"].dtype == torch.int64


@pytest.mark.parametrize(
    "rel,n",
    [
        ("torch7_binary/python-torchfile/floattensor.t7", 1),
        ("other/npz/candle/test.npz", 2),
        ("keras_h5/keras-3.15.1/tiny_mlp_keras3_legacy.h5", 8),
        ("flax_msgpack/flax-0.12.8/mlp_params.msgpack", 6),
        ("pytorch_zip/torch-1.13.1-debian/mixed_dtypes_views_zip.pt", 12),
        ("pytorch_legacy/lpips-0.1.4/v0.1_alex.pth", 5),
    ],
)
def test_corpus_files_to_safetensors_match_the_source_reader(rel, n, tmp_path):
    src = corpus_path(rel)
    out = tmp_path / "out.safetensors"
    report = keishiki.convert(src, out, to="safetensors", quiet=True)
    assert report.passed and report.steps[0].n_tensors == n
    info = keishiki.inspect(src)
    loaded = safetensors_torch.load_file(out)
    for lazy in info.lazy_tensors():
        arr = lazy.load()
        got = loaded[lazy.name]
        assert tuple(got.shape) == tuple(arr.shape), lazy.name
        if arr.dtype.kind in "fiu":
            np.testing.assert_array_equal(
                got.float().numpy() if got.dtype == torch.bfloat16 else got.numpy(), arr
            )


def test_a_torch7_module_without_parameters_has_nothing_to_convert(tmp_path):
    """nn.SoftMax holds only its last output: nothing its PyTorch equivalent would hold."""
    src = corpus_path("torch7_ascii/opencv-testdata/net_softmax_net.txt")
    code, _, err = run_cli("convert", src, tmp_path / "o.safetensors", "--to", "safetensors")
    assert code == 2 and "only the transient state of Lua nn modules (0.output)" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_corpus_checkpoint_with_key(tmp_path):
    src = corpus_path("pytorch_zip/candle/test_with_key.pt")
    out = tmp_path / "o.safetensors"
    keishiki.convert(src, out, to="safetensors", key="model_state_dict", quiet=True)
    reference = torch.load(src, weights_only=True)["model_state_dict"]
    loaded = safetensors_torch.load_file(out)
    assert set(loaded) == set(reference)
    for k in reference:
        assert torch.equal(loaded[k], reference[k].contiguous())


def test_torch7_to_pytorch(tmp_path):
    src = corpus_path("torch7_binary/python-torchfile/doubletensor.t7")
    out = tmp_path / "o.pt"
    report = keishiki.convert(src, out, to="pytorch", quiet=True)
    assert report.passed
    (tensor,) = torch.load(out, weights_only=True).values()
    assert tensor.dtype == torch.float64 and tuple(tensor.shape) == (2, 3)
    assert tensor.sum().item() == pytest.approx(21.9)  # facts.json: sum 21.9


EMPTY_SHAPES = [(0,), (0, 4), (4, 0), (2, 0, 3)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("to, suffix", [("safetensors", ".safetensors"), ("pytorch", ".pt")])
def test_zero_element_tensors_convert_and_verify(tmp_path, shape, to, suffix):
    """safetensors refuses the slice [0:0] of an empty dimension: the read-back check raised
    it as an internal error, so every real Torch7 nn module (empty output/gradInput) failed."""
    src = tmp_path / "empty.pt"
    torch.save({"empty": torch.zeros(shape), "w": torch.arange(6.0)}, src)
    first = tmp_path / "first.safetensors"
    assert keishiki.convert(src, first, to="safetensors", quiet=True).passed
    out = tmp_path / f"out{suffix}"
    assert keishiki.convert(first, out, to=to, quiet=True).passed
    loaded = (
        safetensors_torch.load_file(out)
        if to == "safetensors"
        else torch.load(out, weights_only=True)
    )
    assert tuple(loaded["empty"].shape) == shape and loaded["empty"].dtype == torch.float32
    assert torch.equal(loaded["w"], torch.arange(6.0))


def test_convert_kwargs_name_every_option():
    """The TypedDict type checkers see for ``convert(**options)`` names exactly the options
    ``convert`` takes."""
    from keishiki._convert import _OPTION_NAMES
    from keishiki._convert.base import ConvertKwargs

    assert set(ConvertKwargs.__annotations__) == _OPTION_NAMES


def test_unknown_option_and_bad_dtype_are_refused(pt_files, tmp_path):
    with pytest.raises(InvalidRequest, match="unknown convert option"):
        keishiki.convert(pt_files["zip"], tmp_path / "x", to="safetensors", bogus=1)
    code, _, err = run_cli(
        "convert",
        pt_files["zip"],
        tmp_path / "x.safetensors",
        "--to",
        "safetensors",
        "--dtype",
        "int3",
    )
    assert code == 2 and "--dtype" in err


def test_kernel_copy_and_its_fallback_write_the_same_bytes(pt_files, tmp_path, monkeypatch):
    import os

    fast, slow = tmp_path / "fast.safetensors", tmp_path / "slow.safetensors"
    keishiki.convert(pt_files["zip"], fast, to="safetensors", quiet=True)

    def refuse(*args, **kwargs):
        raise OSError(38, "copy_file_range not supported here")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert keishiki.convert(pt_files["zip"], slow, to="safetensors", quiet=True).passed
    assert fast.read_bytes() == slow.read_bytes()


def test_pytorch_to_safetensors_runs_without_importing_torch(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "sd.pt"
    torch.save({"w": torch.randn(3, 4), "i": torch.arange(5)}, src)
    code = (
        "import sys, keishiki; r = keishiki.convert(sys.argv[1], sys.argv[2], "
        "to='safetensors', quiet=True); assert r.passed; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
