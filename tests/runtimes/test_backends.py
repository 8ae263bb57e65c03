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
SAMPLED = SamplingParams(
    temperature=0.9,
    top_p=0.9,
    top_k=50,
    min_p=0.02,
    repetition_penalty=1.1,
    max_tokens=12,
    seed=1234,
    ignore_eos=True,
)


def _tokens(llm, params, prompts=PROMPTS):
    return [[c.token_ids for c in out.outputs] for out in llm.generate(prompts, params)]


def test_backends_and_reasons(llms):
    assert {name: llm.backend for name, llm in llms.items()} == {
        "torch": "torch",
        "onnxruntime": "onnxruntime",
        "torchscript": "torchscript",
        "torchscript-kv": "torchscript",
    }
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
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
        expected.append([out[0, ids.shape[1] :].tolist()])
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
    assert stopped.token_ids == completion.token_ids[: completion.token_ids.index(stop_id) + 1]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop_id)
    # a stop string: the text is cut before it
    text = completion.text
    stop = next(text[i : i + 2] for i in range(2, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    cut = llm.generate(PROMPTS[1], GREEDY.clone(stop=[stop]))[0].outputs[0]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    assert cut.text == text[: text.index(stop)]


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
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
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
        out.writestr(
            f"{root}/code/__torch__/evil.py",
            "def f(x: Tensor) -> Tensor:\n  return torch.from_file('/etc/passwd')\n",
        )
    with pytest.raises(UnsafeFile, match=r"torch\.from_file.*trust_remote_code"):
        LLM(model=evil, tokenizer=tiny_llama, backend="torchscript")
    code, _out, err = run_cli("run", evil, "--tokenizer", tiny_llama, "-p", "hi", "-n", "1")
    assert code == 1 and "unsafe" in err and err.count("\n") == 1
    trusted = LLM(model=evil, tokenizer=tiny_llama, backend="torchscript", trust_remote_code=True)
    assert trusted.backend == "torchscript"


def _transformers_logprobs(tiny_llama, ids):
    """log_softmax of transformers' own full-sequence logits: the reference."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def test_next_token_logits_match_transformers_on_every_backend(llms, tiny_llama):
    import numpy as np
    import torch

    from keishiki.errors import InvalidRequest

    ids = llms["torch"].tokenizer.encode(PROMPTS[1])
    expected = _transformers_logprobs(tiny_llama, ids)
    for name, llm in llms.items():
        rows = llm.next_token_logits(ids)
        assert rows.shape == expected.shape, name
        got = torch.log_softmax(torch.from_numpy(rows).double(), dim=-1).numpy()
        assert np.max(np.abs(got - expected)) < 1e-4, name
    with pytest.raises(InvalidRequest, match="token id 99999 is outside"):
        llms["torch"].next_token_logits([1, 99999])


def test_logprobs_and_prompt_logprobs_as_vllm_returns_them(llms, tiny_llama):
    """Greedy: each step's chosen token has rank 1, the top-k dict holds k (+ chosen) entries
    in logprob order, the values are transformers' raw log-softmax (temperature does not
    change them, as in vLLM's raw_logprobs mode), and cumulative_logprob is their sum."""
    import numpy as np

    from keishiki.runtimes.outputs import Logprob

    prompt = PROMPTS[2]
    llm = llms["onnxruntime"]
    out = llm.generate([prompt], GREEDY.clone(logprobs=3, prompt_logprobs=2))[0]
    first = out.outputs[0]
    assert len(first.logprobs) == len(first.token_ids) == 12
    full = out.prompt_token_ids + first.token_ids
    expected = _transformers_logprobs(tiny_llama, full)
    total = 0.0
    for step, (token, logprobs) in enumerate(zip(first.token_ids, first.logprobs)):
        assert isinstance(logprobs[token], Logprob) and logprobs[token].rank == 1
        assert len(logprobs) == 3
        row = expected[len(out.prompt_token_ids) - 1 + step]
        assert [tid for tid in logprobs] == list(np.argsort(-row)[:3])
        for tid, lp in logprobs.items():
            assert abs(lp.logprob - row[tid]) < 1e-4
            assert lp.decoded_token == llm.tokenizer.decode([tid], False)
        total += logprobs[token].logprob
    assert abs(first.cumulative_logprob - total) < 1e-9
    # prompt_logprobs: None, then each prompt token given the ones before it
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for i, step in enumerate(out.prompt_logprobs[1:], start=1):
        token = out.prompt_token_ids[i]
        # the top 2 and the prompt's own token (a third entry only when it is not in the top 2)
        assert set(step) == set(np.argsort(-expected[i - 1])[:2].tolist()) | {token}
        assert abs(step[token].logprob - expected[i - 1][token]) < 1e-4
        assert step[token].rank == 1 + int(np.sum(expected[i - 1] > expected[i - 1][token] + 1e-9))
    # sampled, not greedy: the chosen token is still in each dict, with its own rank
    sampled = llm.generate([prompt], SAMPLED.clone(logprobs=0))[0].outputs[0]
    assert all(list(d) == [t] for d, t in zip(sampled.logprobs, sampled.token_ids))
    assert llm.generate([prompt], GREEDY)[0].outputs[0].logprobs is None


def test_onnx_with_external_data_leaving_its_folder_is_refused(tiny_onnx, tmp_path):
    """ONNX Runtime cuts an external-data path at a NUL byte, so 'weights.bin\\0../../x'
    loaded weights.bin and ran while every other command refused the file; run now refuses
    what scan calls dangerous (UnsafeFile, exit 1) unless trusted."""
    import shutil

    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from keishiki.errors import UnsafeFile
    from keishiki.runtimes import LLM
    from tests.conftest import run_cli

    folder = tmp_path / "nul"
    shutil.copytree(tiny_onnx, folder)
    model = onnx.load(str(folder / "model.onnx"))
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "model.onnx"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "weights.bin\0../../../etc/passwd"
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeFile, match="NUL byte.*trust_remote_code"):
        LLM(model=folder)
    code, _out, err = run_cli("run", folder, "-p", "hi", "-n", "1")
    assert code == 1 and "unsafe" in err and err.count("\n") == 1
    assert LLM(model=folder, trust_remote_code=True).backend == "onnxruntime"


def test_logprobs_over_max_logprobs_are_refused_as_vllm_does(llms):
    """vLLM caps logprobs at its engine's max_logprobs (20 by default) with this message;
    --logprobs 100000 printed the whole vocabulary on every line."""
    from keishiki.errors import InvalidRequest

    llm = llms["onnxruntime"]
    with pytest.raises(
        InvalidRequest, match="Requested logprobs of 21, which is greater than max allowed: 20"
    ):
        llm.generate(["Hi"], GREEDY.clone(logprobs=21, max_tokens=1))
    with pytest.raises(InvalidRequest, match="Requested prompt logprobs of 50"):
        llm.generate(["Hi"], GREEDY.clone(prompt_logprobs=50, max_tokens=1))
    assert (
        len(llm.generate(["Hi"], GREEDY.clone(logprobs=20, max_tokens=1))[0].outputs[0].logprobs[0])
        == 20
    )
