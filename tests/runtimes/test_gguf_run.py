"""``run x.gguf``: dequantized once into a cached Hugging Face folder, run with torch; greedy
tokens equal the original Hugging Face model's at f32 and f16."""

from __future__ import annotations

import json

import pytest

import keishiki
from keishiki.runtimes import LLM, SamplingParams
from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("gguf")

PROMPTS = ["Hello, world", "The quick brown fox"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    outs = LLM(model=tiny_llama).generate(PROMPTS, GREEDY)
    return [(o.prompt_token_ids, o.outputs[0].token_ids) for o in outs]


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_gguf_runs_and_matches_the_original(tiny_llama, reference, tmp_path, monkeypatch, quant):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    gguf_file = tmp_path / f"m-{quant}.gguf"
    keishiki.convert(tiny_llama, gguf_file, to="gguf", quant=quant, quiet=True)
    llm = LLM(model=gguf_file)
    assert llm.format == "gguf" and llm.backend == "torch"
    assert "dequantized into a Hugging Face folder" in llm.backend_reason
    outs = llm.generate(PROMPTS, GREEDY)
    assert [(o.prompt_token_ids, o.outputs[0].token_ids) for o in outs] == reference
    # the second load finds the cached folder (no second conversion)
    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    mtime = (cached / "model.safetensors").stat().st_mtime_ns
    LLM(model=gguf_file)
    assert (cached / "model.safetensors").stat().st_mtime_ns == mtime


def test_gguf_cli_and_backend_choice(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    gguf_file = tmp_path / "m.gguf"
    keishiki.convert(tiny_llama, gguf_file, to="gguf", quiet=True)
    code, out, err = run_cli("run", gguf_file, "-p", "Hello", "-t", "0", "-n", "3", "--json")
    assert code == 0, err
    assert len(json.loads(out)["outputs"][0]["outputs"][0]["token_ids"]) == 3
    code, _, err = run_cli("run", gguf_file, "-p", "Hello", "--backend", "onnxruntime")
    assert code == 2 and "runs onnx models and" in err and "is gguf" in err


@pytest.mark.slow
def test_split_gguf_and_its_folder_run(tiny_llama, reference, tmp_path, monkeypatch):
    """A split GGUF runs named by any split or by its folder, as one model."""
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "split"
    folder.mkdir()
    keishiki.convert(tiny_llama, folder / "m.gguf", to="gguf", split_max_tensors=8, quiet=True)
    splits = sorted(p.name for p in folder.iterdir())
    assert len(splits) > 1 and splits[0].endswith("-00001-of-%05d.gguf" % len(splits))
    for target in (folder, folder / splits[-1]):
        outs = LLM(model=target).generate(PROMPTS, GREEDY)
        assert [(o.prompt_token_ids, o.outputs[0].token_ids) for o in outs] == reference
