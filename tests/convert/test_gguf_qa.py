"""GGUF conversions used the way people use them: regression tests for what a demanding user
found broken (each failed before its fix).  Bad input must give a one-line error and exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    """The tiny Llama as an f16 GGUF."""
    out = tmp_path_factory.mktemp("qa") / "tiny.gguf"
    code, _, err = run_cli("convert", tiny_llama, out, "--to", "gguf", "--quant", "f16", "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("keep, to", [(100_000, "safetensors"), (3000, "hf-model")])
def test_truncated_gguf_is_a_one_line_corrupt_error(tiny_gguf, tmp_path, keep, to):
    # GGUFReader raised ValueError ("cannot reshape array") -> "internal error"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:keep])
    code, _, err = run_cli("convert", cut, tmp_path / "out", "--to", to)
    assert code == 2
    assert "corrupt or truncated" in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1


def test_truncated_gguf_in_compare_is_a_one_line_error(tiny_llama, tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:100_000])
    code, _, err = run_cli("compare", tiny_llama, cut)
    assert code == 2 and "corrupt or truncated" in err


def test_config_without_num_key_value_heads_is_refused(tiny_llama, tmp_path):
    # the tiny Llama has 4 heads, 2 KV heads: without the key, transformers (and keishiki)
    # default to 4; the GGUF was written with head_count_kv 4 and llama.cpp refused to load it
    src = tmp_path / "nokv"
    shutil.copytree(tiny_llama, src)
    config = json.loads((src / "config.json").read_text())
    del config["num_key_value_heads"]
    (src / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("convert", src, tmp_path / "nokv.gguf", "--to", "gguf")
    assert code == 2, err
    assert "num_key_value_heads" in err and "set num_key_value_heads to 2" in err
    assert not (tmp_path / "nokv.gguf").exists()
