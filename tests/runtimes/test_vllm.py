"""The vLLM adapter: the SamplingParams mapping (with a fake vllm module), the refusals
without vLLM / a GPU / a supported architecture, and a real run where vLLM and CUDA exist."""

from __future__ import annotations

import json
import sys
import types

import pytest

from keishiki.errors import RuntimeUnavailable
from keishiki.runtimes import SamplingParams, vllm_backend
from keishiki.runtimes.vllm_backend import VllmBackend, sampling_kwargs


def test_sampling_kwargs_map_one_to_one():
    params = SamplingParams(
        n=2,
        temperature=0.8,
        top_p=0.95,
        top_k=0,
        min_p=0.05,
        repetition_penalty=1.1,
        seed=7,
        max_tokens=32,
        stop="###",
        stop_token_ids=[5],
        ignore_eos=True,
    )
    kwargs = sampling_kwargs(params)
    assert kwargs == {
        "n": 2,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": -1,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": 7,
        "max_tokens": 32,
        "stop": ["###"],
        "stop_token_ids": [5],
        "ignore_eos": True,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        "logprobs": None,
        "prompt_logprobs": None,
    }
    assert sampling_kwargs(SamplingParams(top_k=40))["top_k"] == 40
    assert sampling_kwargs(SamplingParams())["stop"] is None


class _FakeCompletion:
    def __init__(self, index):
        self.index, self.text, self.token_ids = index, f"text{index}", [10 + index, 11]
        self.finish_reason, self.stop_reason = "length", None
        lp = types.SimpleNamespace
        self.logprobs = [
            {10 + index: lp(logprob=-0.5, rank=1, decoded_token="x")},
            {11: lp(logprob=-1.5, rank=2, decoded_token="y")},
        ]


def _fake_vllm(calls):
    module = types.ModuleType("vllm")
    module.__version__ = "0.0-fake"

    class SamplingParamsFake:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLMFake:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"] = (prompts, [p.kwargs for p in params])
            first = {7: types.SimpleNamespace(logprob=-2.0, rank=3, decoded_token="z")}
            return [
                types.SimpleNamespace(
                    outputs=[_FakeCompletion(i) for i in range(p.kwargs["n"])],
                    prompt_logprobs=[None, first],
                )
                for p in params
            ]

    module.SamplingParams, module.LLM = SamplingParamsFake, LLMFake
    return module


def test_adapter_with_a_fake_vllm(tiny_llama, monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls))
    monkeypatch.setattr(vllm_backend, "available", lambda name: True)
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: True)
    from keishiki.runtimes import LLM

    llm = LLM(
        model=tiny_llama,
        backend="vllm",
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        seed=3,
        max_num_seqs=8,
    )
    assert llm.backend == "vllm" and "tensor_parallel_size=4" in llm.backend_reason
    engine = calls["engine"]
    assert (
        engine["model"],
        engine["tensor_parallel_size"],
        engine["pipeline_parallel_size"],
        engine["seed"],
        engine["max_num_seqs"],
    ) == (str(tiny_llama), 4, 2, 3, 8)
    out = llm.generate(["Hello", "Hi"], SamplingParams(n=2, temperature=0.5, seed=1))
    prompts, params = calls["generate"]
    assert prompts == [
        {"prompt_token_ids": llm.tokenizer.encode("Hello")},
        {"prompt_token_ids": llm.tokenizer.encode("Hi")},
    ]
    assert params[0]["n"] == 2 and params[0]["temperature"] == 0.5 and params[0]["seed"] == 1
    assert [c.text for c in out[1].outputs] == ["text0", "text1"]
    assert out[0].outputs[1].token_ids == [11, 11]
    # vLLM's logprobs come back as keishiki's Logprob, decoded by keishiki's tokenizer
    out = llm.generate(["Hello"], SamplingParams(logprobs=1, prompt_logprobs=1))[0]
    assert calls["generate"][1][0]["logprobs"] == 1
    assert calls["generate"][1][0]["prompt_logprobs"] == 1
    first = out.outputs[0]
    assert [(lp.logprob, lp.rank) for step in first.logprobs for lp in step.values()] == [
        (-0.5, 1),
        (-1.5, 2),
    ]
    assert first.cumulative_logprob == -2.0
    assert first.logprobs[1][11].decoded_token == llm.tokenizer.decode([11], False)
    assert out.prompt_logprobs[0] is None and out.prompt_logprobs[1][7].rank == 3


def test_without_vllm_is_a_clear_error(tiny_llama, monkeypatch):
    monkeypatch.setattr(vllm_backend, "available", lambda name: False)
    with pytest.raises(RuntimeUnavailable, match="needs vLLM, which is not installed"):
        VllmBackend(tiny_llama)


def test_without_gpu_is_a_clear_error(tiny_llama, monkeypatch):
    monkeypatch.setattr(vllm_backend, "available", lambda name: True)
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="needs a CUDA GPU"):
        VllmBackend(tiny_llama)


def test_unsupported_architecture_is_named(tmp_path, monkeypatch):
    """The installed vLLM's own registry decides (it is newer than any shipped list); an
    architecture outside it is refused by name unless the user picks vLLM's Transformers
    backend (model_impl='transformers')."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["TinyNetForMagic"]}))
    calls: dict = {}
    fake = _fake_vllm(calls)
    fake.__version__ = "0.33.0"
    fake.ModelRegistry = types.SimpleNamespace(get_supported_archs=lambda: {"TinyNetForMagic"})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "available", lambda name: True)
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: True)
    assert VllmBackend(tmp_path).name == "vllm"  # the shipped list (0.14) lacks it: ignored
    fake.ModelRegistry = types.SimpleNamespace(get_supported_archs=lambda: {"LlamaForCausalLM"})
    with pytest.raises(
        RuntimeUnavailable,
        match="TinyNetForMagic is not on vLLM 0.33.0's supported list.*model_impl='transformers'",
    ):
        VllmBackend(tmp_path)
    VllmBackend(tmp_path, model_impl="transformers")
    assert calls["engine"]["model_impl"] == "transformers"
    del fake.ModelRegistry  # an older vLLM without the API: the shipped list answers
    monkeypatch.setattr(
        vllm_backend, "supported_architectures", lambda: ("0.14", {"LlamaForCausalLM"})
    )
    with pytest.raises(RuntimeUnavailable, match="TinyNetForMagic is not on vLLM 0.14"):
        VllmBackend(tmp_path)


def test_shipped_list_when_present():
    version, archs = vllm_backend.supported_architectures()
    if archs is None:
        pytest.skip("keishiki/data/vllm_supported.json is not shipped yet")
    assert "LlamaForCausalLM" in archs


@pytest.mark.gpu
def test_real_vllm(tiny_llama):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from keishiki.runtimes import LLM

    llm = LLM(model=tiny_llama, backend="vllm")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    out = llm.generate(["Hello, world!"], greedy)[0].outputs[0]
    reference = LLM(model=tiny_llama, backend="torch").generate(["Hello, world!"], greedy)
    assert out.token_ids == reference[0].outputs[0].token_ids
