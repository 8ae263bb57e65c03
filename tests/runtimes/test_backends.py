"""The tiny Llama and its conversions give the same tokens on every backend, and match
transformers' own ``generate``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from keishiki.runtimes import SamplingParams

from .conftest import PROMPTS

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, min_p=0.02,
                         repetition_penalty=1.1, max_tokens=12, seed=1234, ignore_eos=True)


def _tokens(llm, params, prompts=PROMPTS):
    return [[c.token_ids for c in out.outputs] for out in llm.generate(prompts, params)]


def test_backends_and_reasons(llms):
    assert {name: llm.backend for name, llm in llms.items()} == {
        "torch": "torch", "onnxruntime": "onnxruntime", "torchscript": "torchscript",
        "torchscript-kv": "torchscript"}
    assert "KV cache" in llms["torch"].backend_reason
    assert "KV cache (2 layers)" in llms["onnxruntime"].backend_reason
    assert "recomputed every step" in llms["torchscript"].backend_reason
    assert "KV cache (2 layers)" in llms["torchscript-kv"].backend_reason


def test_greedy_matches_transformers_generate(llms, tiny_llama):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = llms["torch"].tokenizer
    expected = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             do_sample=False)
        expected.append([out[0, ids.shape[1]:].tolist()])
    # both stop at EOS (token 2, which the first prompt reaches), included in the ids
    assert any(2 in seq[0] for seq in expected)
    assert _tokens(llms["torch"], GREEDY.clone(ignore_eos=False)) == expected


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
def test_same_tokens_on_every_backend(llms, params):
    results = {name: _tokens(llm, params) for name, llm in llms.items()}
    reference = results.pop("torch")
    assert len(reference) == 3 and all(len(seq[0]) == 12 for seq in reference)
    for name, tokens in results.items():
        assert tokens == reference, name


def test_logits_agree_closely(llms):
    import numpy as np

    ids = llms["torch"].tokenizer.encode(PROMPTS[0])
    batch = np.array([ids]), np.ones((1, len(ids)), np.int64)
    positions = np.arange(len(ids))[None]
    reference, _ = llms["torch"]._engine._forward(None, batch[0], batch[1], positions)
    for name in ("onnxruntime", "torchscript", "torchscript-kv"):
        logits, _ = llms[name]._engine._forward(None, batch[0], batch[1], positions)
        assert np.abs(logits - reference).max() < 1e-4, name


def test_padded_batch_equals_one_by_one(llms):
    llm = llms["onnxruntime"]
    together = _tokens(llm, GREEDY)
    alone = [_tokens(llm, GREEDY, [p])[0] for p in PROMPTS]
    assert together == alone


def test_n_and_seed(llms):
    llm = llms["onnxruntime"]
    params = SAMPLED.clone(n=3)
    first = llm.generate(PROMPTS[0], params)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1  # each completion its own stream
    assert llm.generate(PROMPTS[0], params)[0].outputs == first.outputs
    other = llm.generate(PROMPTS[0], params.clone(seed=99))[0]
    assert [c.token_ids for c in other.outputs] != [c.token_ids for c in first.outputs]


def test_output_shape_text_and_stops(llms):
    llm = llms["onnxruntime"]
    out = llm.generate(PROMPTS[1], GREEDY)[0]
    assert out.prompt == PROMPTS[1]
    assert out.prompt_token_ids == llm.tokenizer.encode(PROMPTS[1])
    completion = out.outputs[0]
    assert completion.finish_reason == "length" and completion.stop_reason is None
    assert completion.text == llm.tokenizer.decode(completion.token_ids)
    # a stop token: generation ends on it, it stays in token_ids, stop_reason names it
    stop_id = completion.token_ids[3]
    stopped = llm.generate(PROMPTS[1], GREEDY.clone(stop_token_ids=[stop_id]))[0].outputs[0]
    assert stopped.token_ids == completion.token_ids[:completion.token_ids.index(stop_id) + 1]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop_id)
    # a stop string: the text is cut before it
    text = completion.text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    cut = llm.generate(PROMPTS[1], GREEDY.clone(stop=[stop]))[0].outputs[0]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    assert cut.text == text[:text.index(stop)]


def test_streaming_deltas_add_up(llms):
    llm = llms["torch"]
    pieces = []
    out = llm.generate(PROMPTS[2], GREEDY, on_text=lambda r, i, d: pieces.append(d))[0]
    assert "".join(pieces) == out.outputs[0].text


def test_eos_ends_generation(llms):
    llm = llms["onnxruntime"]
    eos = llm.tokenizer.eos_token_ids
    assert eos == [2]
    # EOS (id 2) ends a sequence, stays last in its token_ids, and finish_reason says "stop"
    params = GREEDY.clone(max_tokens=30, ignore_eos=False)
    for out in llm.generate(PROMPTS, params):
        ids = out.outputs[0].token_ids
        assert 2 not in ids[:-1]
        assert out.outputs[0].finish_reason == ("stop" if ids[-1] == 2 else "length")


def test_chat_uses_the_template(llms):
    llm = llms["onnxruntime"]
    messages = [{"role": "user", "content": "Hello"}]
    out = llm.chat(messages, GREEDY)[0]
    assert out.prompt == "<|user|>Hello</s><|assistant|>"
    assert out.prompt_token_ids == llm.tokenizer.encode(out.prompt, add_special_tokens=False)
    assert len(llm.chat([messages, messages], GREEDY)) == 2


def test_onnxruntime_needs_neither_torch_nor_transformers(tiny_onnx):
    code = f"""
import sys, json
from keishiki import LLM, SamplingParams
llm = LLM(model={str(tiny_onnx)!r})
out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4))
chat = llm.chat([{{"role": "user", "content": "hi"}}], SamplingParams(max_tokens=2, seed=0))
print(json.dumps([llm.backend, [m for m in ("torch", "transformers") if m in sys.modules]]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["onnxruntime", []]


def test_torchscript_with_a_file_op_is_refused_unless_trusted(tiny_ts, tiny_llama, tmp_path):
    """``torch.jit.load`` runs the archive's code in forward: a file op found by the scanner
    stops the load (UnsafeFile, exit 1) until the caller trusts the file."""
    import zipfile

    from keishiki.errors import UnsafeFile
    from keishiki.runtimes import LLM
    from tests.conftest import run_cli

    evil = tmp_path / "model.pt"
    with zipfile.ZipFile(tiny_ts / "model.pt") as src, zipfile.ZipFile(evil, "w") as out:
        for item in src.infolist():
            out.writestr(item, src.read(item))
        root = src.namelist()[0].split("/")[0]
        out.writestr(f"{root}/code/__torch__/evil.py",
                     "def f(x: Tensor) -> Tensor:\n  return torch.from_file('/etc/passwd')\n")
    with pytest.raises(UnsafeFile, match=r"torch\.from_file.*trust_remote_code"):
        LLM(model=evil, tokenizer=tiny_llama, backend="torchscript")
    code, _out, err = run_cli("run", evil, "--tokenizer", tiny_llama, "-p", "hi", "-n", "1")
    assert code == 1 and "unsafe" in err and err.count("\n") == 1
    trusted = LLM(model=evil, tokenizer=tiny_llama, backend="torchscript",
                  trust_remote_code=True)
    assert trusted.backend == "torchscript"
