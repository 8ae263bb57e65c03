"""The conversion framework: path finding, refusals, atomic outputs, failed verification."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keishiki
from keishiki._convert.base import Edge
from keishiki._convert.paths import find_path
from keishiki.errors import InvalidRequest, Mismatch, MissingDependency, NoConversionPath
from tests.conftest import corpus_path, run_cli

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture()
def small_st(tmp_path) -> Path:
    path = tmp_path / "in.safetensors"
    safetensors_torch.save_file({"w": torch.randn(8, 8), "b": torch.zeros(8)}, path)
    return path


def test_find_path_is_shortest_and_explains_failures():
    edges = [
        Edge("a", "b", "m:f"),
        Edge("b", "c", "m:g"),
        Edge("a", "c", "m:h"),
        Edge("c", "d", "m:i"),
    ]
    assert [e.run for e in find_path("a", "d", edges)] == ["m:h", "m:i"]
    assert [e.run for e in find_path("b", "d", edges)] == ["m:g", "m:i"]
    with pytest.raises(NoConversionPath, match="d converts to|no conversion from d"):
        find_path("d", "a", edges)
    real = [e.name for e in find_path("torch7", "gguf")]
    assert real == ["torch7 -> safetensors", "safetensors -> gguf"]
    # an edge that needs an original file starts a path or is not taken: a generic GGUF
    # written on the way has no architecture to make an HF folder of
    first = [Edge("a", "b", "m:f"), Edge("b", "c", "m:g", first_only=True)]
    assert [e.run for e in find_path("b", "c", first)] == ["m:g"]
    with pytest.raises(NoConversionPath, match="a converts to: b "):
        find_path("a", "c", first)
    assert [e.name for e in find_path("gguf", "hf-model")] == ["gguf -> hf-model"]
    with pytest.raises(NoConversionPath, match="pytorch to hf-model"):
        find_path("pytorch", "hf-model")


def test_no_path_is_a_one_line_error_exit_2(tmp_path):
    src = tmp_path / "x.npy"
    import numpy as np

    np.save(src, np.ones(3))
    code, _, err = run_cli("convert", src, tmp_path / "o.gguf", "--to", "tflite")
    assert code == 2 and "--to must be one of" in err
    keras = corpus_path("other/keras_v3_zip/keras-3.15.1/tiny_mlp_keras3.keras")
    code, _, err = run_cli("convert", keras, tmp_path / "o.safetensors", "--to", "safetensors")
    assert code == 2 and "no conversion path from keras to safetensors" in err
    assert err.count("\n") == 1


def test_refuses_existing_output_and_input_as_output(small_st, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    code, _, err = run_cli("convert", small_st, out, "--to", "safetensors")
    assert code == 2 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious"
    code, _, err = run_cli("convert", small_st, small_st, "--to", "safetensors", "--force")
    assert code == 2 and "refusing to write over the input" in err
    # --force replaces what keishiki would write, not a file of the user's that merely has
    # the output's name
    code, _, err = run_cli("convert", small_st, out, "--to", "safetensors", "--force", "-q")
    assert code == 2 and "is not a model file, so it is not keishiki's to replace" in err
    assert out.read_bytes() == b"precious"
    shutil.copy(small_st, out)
    code, _, _ = run_cli(
        "convert", small_st, out, "--to", "safetensors", "--force", "-q", "--dtype", "float16"
    )
    assert code == 0 and set(safetensors_torch.load_file(out)) == {"w", "b"}
    assert safetensors_torch.load_file(out)["w"].dtype == torch.float16


FORCE_CASES = [
    # (what is at OUT, target, refused with)
    ("user folder", "hf-model", "holds what keishiki does not write (notes.txt)"),
    ("folder with a subfolder", "hf-model", "holds what keishiki does not write (sub)"),
    ("folder, file output", "safetensors", "is a folder and the output is a file"),
]


@pytest.mark.parametrize("case, to, message", FORCE_CASES)
def test_force_never_deletes_what_keishiki_did_not_write(small_st, tmp_path, case, to, message):
    """The red team's `convert X DIR --force` deleted an unrelated folder and wrote a file in
    its place: --force replaces only a model output keishiki would write."""
    out = tmp_path / ("out.safetensors" if to == "safetensors" else "out")
    out.mkdir()
    (out / "config.json").write_text("{}")
    if case == "folder with a subfolder":
        (out / "sub").mkdir()
        (out / "sub" / "thesis.tex").write_text("precious")
    else:
        (out / "notes.txt").write_text("precious")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    code, _, err = run_cli("convert", small_st, out, "--to", to, "--force", "-q")
    assert code == 2 and message in err and err.count("\n") == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_force_does_not_replace_a_model_of_another_kind(tiny_llama, tmp_path):
    """An ONNX export folder is no hf-model output: --force --to hf-model leaves it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    shutil.copy(corpus_path("onnx/onnxruntime-1.32.0/mul_1.onnx"), out / "model.onnx")
    code, _, err = run_cli("convert", tiny_llama, out, "--to", "hf-model", "--force", "-q")
    assert code == 2 and "holds a model in the onnx format, not the hf-model output" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx"]


@pytest.mark.parametrize(
    "name, carried",
    [
        ("config.json", True),
        ("tokenizer.model", True),
        ("README.md", True),
        ("LICENSE.txt", True),
        ("modeling_llama3.py", True),  # remote code: the copy needs it to load
        ("configuration_x.py", True),
        ("spiece.model", True),  # T5's SentencePiece vocabulary
        ("qwen.tiktoken", True),
        ("source.spm", True),
        ("sentencepiece.bpe.model", True),
        ("classifier.model", False),  # a *.model that does not say it is a vocabulary
        ("processor_config.json", True),
        ("model.onnx", False),  # other formats' weights: stale beside converted ones
        ("ggml-model-f16.gguf", False),
        ("flax_model.msgpack", False),
        ("notes.txt", False),
        ("train.py", False),
        ("optimizer.pt", False),
    ],
)
def test_what_travels_with_the_weights(name, carried):
    from keishiki.core.atomic import is_sidecar

    assert is_sidecar(name) is carried


def test_force_replaces_keishikis_own_folder(tiny_llama, tmp_path):
    """Also when the source carries a card and a licence, which travel with the weights (a
    --force run then refused: "holds what keishiki does not write"), and other formats'
    weights and other files beside them, which do not (stale copies)."""
    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    carried = ["LICENSE", "README.md"]
    for name in [*carried, "notes.txt", "x.gguf", "flax_model.msgpack"]:
        (src / name).write_text(name)
    shutil.copy(corpus_path("onnx/onnxruntime-1.32.0/mul_1.onnx"), src / "model.onnx")
    out = tmp_path / "out"
    assert run_cli("convert", src, out, "--to", "hf-model", "-q")[0] == 0
    names = sorted(p.name for p in out.iterdir())
    assert set(carried) <= set(names) and "model.safetensors" in names
    assert not {"notes.txt", "x.gguf", "flax_model.msgpack", "model.onnx"} & set(names)
    code, _, err = run_cli(
        "convert", src, out, "--to", "hf-model", "--force", "-q", "--dtype", "float16"
    )
    assert code == 0, err
    weights = safetensors_torch.load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}


@pytest.mark.parametrize(
    "missing,to,name,extra",
    [
        ("gguf", "gguf", "o.gguf", "gguf"),
        # writing safetensors needs the safetensors library alone, not transformers
        ("safetensors", "safetensors", "o2.safetensors", "safetensors"),
    ],
)
def test_missing_extra_names_the_pip_line(
    small_st, tmp_path, monkeypatch, missing, to, name, extra
):
    import keishiki._optional as optional

    real = optional.available
    monkeypatch.setattr(optional, "available", lambda m: m != missing and real(m))
    with pytest.raises(MissingDependency, match=rf"keishiki\[{extra}\]"):
        keishiki.convert(small_st, tmp_path / name, to=to)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "holder, force, replaced",
    [
        ("user file", False, False),
        ("user file", True, False),  # not a model: never keishiki's to replace
        ("earlier output", False, False),  # not without --force
        ("earlier output", True, True),
        ("the input", True, False),  # never the input, --force or not
    ],
)
def test_an_unverified_output_never_replaces_what_holds_its_name(
    small_st, tmp_path, monkeypatch, holder, force, replaced
):
    """A failed verification keeps the output as OUT.unverified; what already has that name
    is replaced only as OUT would be (--force, a model, not an input), else the output takes
    a free OUT.unverified-PID name (the input named so was deleted)."""
    import keishiki._convert.weights as weights

    monkeypatch.setattr(
        weights, "verify_safetensors", lambda *a, **k: {"method": "read-back", "passed": False}
    )
    out = tmp_path / "o.safetensors"
    taken = tmp_path / "o.safetensors.unverified"
    src = small_st
    if holder == "user file":
        taken.write_text("notes")
    elif holder == "earlier output":
        shutil.copy(small_st, taken)
    else:
        src = taken
        shutil.copy(small_st, src)
    before = taken.read_bytes()
    args = ["convert", src, out, "--to", "safetensors", "--dtype", "float16"]
    code, _, err = run_cli(*args, *(["--force"] if force else []))
    assert code == 1, err
    kept = err.split("kept as ")[1].split(" for inspection")[0]
    if replaced:
        assert Path(kept) == taken and taken.read_bytes() != before
    else:
        assert Path(kept).name == f"o.safetensors.unverified-{os.getpid()}"
        assert taken.read_bytes() == before and Path(kept).is_file()


def test_a_failed_conversion_leaves_no_folders_it_made(tmp_path):
    """The folders made for OUT go when nothing was written (a refusal left deep/a/b);
    a folder that was there stays, and a written OUT keeps its folders."""
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 4), np.float32), "mask": np.ones(4, bool)}, str(src))
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "deep" / "a" / "b" / "m.gguf", tmp_path / "kept" / "c" / "m.gguf"):
        code, _, err = run_cli("convert", src, out, "--to", "gguf", "-q")
        assert code == 2 and "GGUF has no type for bool" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "m.safetensors"]
    assert list((tmp_path / "kept").iterdir()) == []
    out = tmp_path / "deep" / "a" / "m.safetensors"
    assert run_cli("convert", src, out, "--to", "safetensors", "-q")[0] == 0
    assert [p.name for p in out.parent.iterdir()] == ["m.safetensors"]


def test_not_enough_disk_space_is_refused(small_st, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1))
    with pytest.raises(InvalidRequest, match="free"):
        keishiki.convert(small_st, tmp_path / "o.pt", to="pytorch")


def test_failed_verification_keeps_output_aside_or_removes_it(small_st, tmp_path, monkeypatch):
    import keishiki._convert.weights as weights

    monkeypatch.setattr(
        weights,
        "verify_safetensors",
        lambda *a, **k: {
            "method": "read-back",
            "passed": False,
            "reason": "w: differs (max abs diff 1)",
        },
    )
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_cli("convert", small_st, out, "--to", "safetensors", "--json")
    assert code == 1 and "verification failed" in err and "w: differs" in err
    assert json.loads(stdout)["passed"] is False
    assert not out.exists() and (tmp_path / "o.safetensors.unverified").is_file()
    code, _, err = run_cli(
        "convert", small_st, tmp_path / "p.safetensors", "--to", "safetensors", "--strict"
    )
    assert code == 1 and "removed" in err
    assert not list(tmp_path.glob("p.safetensors*")) and not list(tmp_path.glob(".p.*"))
    with pytest.raises(Mismatch):
        keishiki.convert(small_st, tmp_path / "q.safetensors", to="safetensors")


def test_no_verify_skips_verification(small_st, tmp_path):
    report = keishiki.convert(small_st, tmp_path / "o.pt", to="pytorch", verify=False, quiet=True)
    assert report.steps[0].verify == {} and not report.verified


def test_sigkill_mid_conversion_leaves_no_output(tmp_path):
    """A conversion killed with SIGKILL at a random moment leaves nothing under OUT."""
    import numpy as np

    src = tmp_path / "big.safetensors"
    safetensors_torch.save_file({f"t{i}": torch.randn(1024, 1024) for i in range(48)}, src)
    out = tmp_path / "big.gguf"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keishiki",
            "convert",
            str(src),
            str(out),
            "--to",
            "gguf",
            "--quant",
            "q8_0",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    tmp_seen = False
    while time.time() < deadline and proc.poll() is None:
        tmp_seen = any(".keishiki-tmp-" in p.name for p in tmp_path.iterdir())
        if tmp_seen:
            time.sleep(0.3)  # mid-way through writing tensor data
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp_seen, "the conversion finished before it could be killed"
    assert not out.exists()
    assert np.all([".keishiki-" in p.name or p == src for p in tmp_path.iterdir()])


def test_formats_command_lists_formats_and_edges():
    code, stdout, _ = run_cli("formats", "--json")
    assert code == 0
    data = json.loads(stdout)
    ids = {f["id"]: f for f in data["formats"]}
    assert {"safetensors", "pytorch", "gguf", "onnx", "torch7", "hf-model"} <= set(ids)
    assert ids["safetensors"]["readable"] and ids["safetensors"]["writable"]
    assert not ids["torch7"]["writable"]
    pairs = {(e["src"], e["dst"]): e for e in data["edges"]}
    assert pairs[("hf-model", "gguf")]["extras"] == ["gguf", "hf"]
    assert pairs[("pytorch", "safetensors")]["lossless"] is True
    assert pairs[("hf-model", "gguf")]["lossless"] is False
    code, stdout, _ = run_cli("formats")
    assert code == 0 and "keishiki[gguf]" in stdout


def test_report_json_and_table(small_st, tmp_path):
    code, stdout, _ = run_cli("convert", small_st, tmp_path / "o.pt", "--to", "pytorch", "--json")
    data = json.loads(stdout)
    assert code == 0 and data["path"] == ["safetensors -> pytorch"] and data["passed"]
    step = data["steps"][0]
    assert step["out"] == str(tmp_path / "o.pt") and step["n_tensors"] == 2
    assert step["verify"]["n_bit_exact"] == 2
    code, stdout, _ = run_cli("convert", small_st, tmp_path / "o2.pt", "--to", "pytorch")
    assert code == 0 and "ok (read-back)" in stdout


def test_options_that_do_not_apply_and_negative_tolerances_are_refused(tmp_path):
    from tests.conftest import run_cli

    src = tmp_path / "w.safetensors"
    import numpy as np

    from keishiki.core.tensor import LazyTensor, TensorInfo
    from keishiki.formats import safetensors as st

    arr = np.arange(6, dtype=np.float32)
    with open(src, "wb") as fh:
        st.write(fh, [LazyTensor(TensorInfo("a", "float32", (6,), 24), lambda: arr)])
    code, _, err = run_cli(
        "convert", src, tmp_path / "o.safetensors", "--to", "safetensors", "--quant", "q8_0"
    )
    assert code == 2 and "--quant applies to --to gguf / onnx only" in err
    code, _, err = run_cli(
        "convert", src, tmp_path / "o2.safetensors", "--to", "safetensors", "--atol", "-1"
    )
    assert code == 2 and "--atol must be >= 0" in err
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o2.safetensors").exists()
    code, _, err = run_cli(
        "convert", src, tmp_path / "o3.safetensors", "--to", "safetensors", "--atol", "nan"
    )
    assert code == 2 and "--atol must be >= 0, got nan" in err


def test_bracketed_output_path_is_printed_not_parsed(tmp_path):
    import numpy as np

    from keishiki.core.tensor import LazyTensor, TensorInfo
    from keishiki.formats import safetensors as st
    from tests.conftest import run_cli

    src = tmp_path / "w.safetensors"
    arr = np.arange(4, dtype=np.float32)
    with open(src, "wb") as fh:
        st.write(fh, [LazyTensor(TensorInfo("a", "float32", (4,), 16), lambda: arr)])
    out_dir = tmp_path / "br[/x]"
    out_dir.mkdir(parents=True)
    code, out, err = run_cli("convert", src, out_dir / "o.safetensors", "--to", "safetensors")
    assert code == 0 and "internal error" not in err and "br[/x]" in out


def test_source_without_tensors_is_refused(tmp_path):
    import zipfile

    from tests.conftest import run_cli

    src = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00X\x05\x00\x00\x00epochq\x01K\x03s.")
        zf.writestr("archive/version", "3\n")
    code, _, err = run_cli("convert", src, tmp_path / "o.safetensors", "--to", "safetensors")
    assert code == 2 and "holds no tensors to convert" in err
    assert not (tmp_path / "o.safetensors").exists()
