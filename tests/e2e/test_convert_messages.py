"""convert errors name the output the user typed, never keishiki's temporary name."""

from __future__ import annotations

import pytest

from tests.conftest import corpus_path, run_cli

ONNX = "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx"


def test_external_data_into_a_file_names_the_users_out(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "graph.onnx"
    code, _, err = run_cli("convert", corpus_path(ONNX), out, "--to", "onnx", "--external-data")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{out}: external data needs a folder OUT" in err
    assert "keishiki-tmp" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir()]


def test_final_name_maps_temporary_paths_back(tmp_path):
    from keishiki.core.atomic import atomic_output, final_name

    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "m.safetensors") as tmp:
            assert final_name(tmp) == tmp_path / "m.safetensors"
            raise RuntimeError
    assert final_name(tmp_path / "plain.onnx") == tmp_path / "plain.onnx"


def test_torchscript_from_a_plain_pickle_says_what_it_holds(tmp_path):
    pytest.importorskip("torch")
    import zipfile

    src = tmp_path / "obj.pt"  # a zip checkpoint whose pickle is a plain dict without tensors
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("obj/data.pkl", b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.")
        z.writestr("obj/version", "3\n")
    code, _, err = run_cli("convert", src, tmp_path / "ts.pt", "--to", "torchscript")
    assert code == 2 and err.count("\n") == 1, err
    assert "holds a pickled object, not a pickled nn.Module" in err and "a other" not in err
