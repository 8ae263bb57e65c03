"""``keishiki run`` and ``keishiki bench``: outputs, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import corpus_path, run_cli

from .test_tokenizer_select import NON_LM_ONNX


def test_run_streams_one_prompt(tiny_onnx, llms):
    code, out, err = run_cli("run", tiny_onnx, "-p", "Hello, world", "-t", "0", "-n", "8")
    assert code == 0, err
    expected = llms["onnxruntime"].generate(
        ["Hello, world"], __import__("keishiki").SamplingParams(temperature=0, max_tokens=8)
    )
    assert out == expected[0].outputs[0].text + "\n"
    assert "onnxruntime" in err and "tokens in" in err


def test_run_json_several_prompts(tiny_llama):
    code, out, err = run_cli(
        "run",
        tiny_llama,
        "-p",
        "Hello",
        "-p",
        "初めまして",
        "--json",
        "--seed",
        "0",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--min-p",
        "0.01",
        "-n",
        "5",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["backend"] == "torch"
    assert [o["prompt"] for o in data["outputs"]] == ["Hello", "初めまして"]
    assert all(len(o["outputs"][0]["token_ids"]) <= 5 for o in data["outputs"])
    again = json.loads(
        run_cli(
            "run",
            tiny_llama,
            "-p",
            "Hello",
            "-p",
            "初めまして",
            "--json",
            "--seed",
            "0",
            "--top-p",
            "0.9",
            "--top-k",
            "20",
            "--min-p",
            "0.01",
            "-n",
            "5",
        )[1]
    )
    assert [o["outputs"] for o in again["outputs"]] == [o["outputs"] for o in data["outputs"]]


def test_run_chat(tiny_onnx):
    code, out, err = run_cli("run", tiny_onnx, "-p", "hi", "--chat", "--json", "-n", "2")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["prompt"] == "<|user|>hi</s><|assistant|>"


def _error(*args):
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keishiki: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        # a non-UTF-8 byte on the command line arrives as a lone surrogate
        (["-p", "caf\udcff"], "prompt 0 is not valid text (surrogates not allowed"),
        (["-p", "caf\udcff", "--chat"], "conversation 0 is not valid text (surrogates"),
    ],
)
def test_text_that_is_not_unicode_is_a_bad_request(tiny_llama, args, message):
    """With --chat too (the tokenizers library raised TypeError: "internal error")."""
    assert message in _error("run", tiny_llama, *args)


def test_run_errors(tiny_llama, tmp_path):
    assert "no such file or folder" in _error("run", tmp_path / "nope", "-p", "x")
    assert "no prompt" in _error("run", tiny_llama)
    assert "top_p must be in (0, 1], got 0.0" in _error(
        "run", tiny_llama, "-p", "x", "--top-p", "0"
    )
    assert "max_tokens must be at least 1, got -3" in _error(
        "run", tiny_llama, "-p", "x", "--max-tokens", "-3"
    )
    assert "temperature must be non-negative" in _error("run", tiny_llama, "-p", "x", "-t", "-1")
    assert "cannot generate text" in _error("run", tiny_llama / "model.safetensors", "-p", "x")


def test_run_refuses_state_dict_and_non_lm_graph(tiny_llama_state_dict, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save(dict(tiny_llama_state_dict), path)
    assert "pytorch file cannot generate text" in _error("run", path, "-p", "x")
    message = _error("run", corpus_path(NON_LM_ONNX), "-p", "x")
    assert "not a causal language model graph" in message
    # a BertModel folder: AutoModelForCausalLM would give it a randomly initialised head
    message = _error("run", corpus_path("hf_dir/tiny-bert-safetensors"), "-p", "x")
    assert "not a causal language model checkpoint (BertModel)" in message
    assert "cls.predictions.bias" in message and "fill at random" in message


def test_run_names_a_weight_that_does_not_fit_the_config(tiny_llama, tmp_path):
    """A folder whose checkpoint holds a weight transposed: one line naming it (transformers
    raised a RuntimeError that named nothing: "internal error")."""
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "bad"
    shutil.copytree(tiny_llama, folder)
    weights = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    rows, cols = weights[name].shape
    weights[name] = weights[name].T.copy()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    message = _error("run", folder, "-p", "x")
    assert message == (
        f"keishiki: error: {folder}: its weights do not fit its config.json: {name} is "
        f"[{cols}, {rows}] in the checkpoint, [{rows}, {cols}] in the model"
    )


@pytest.mark.slow
def test_bench_json(tiny_onnx, tiny_ts_kv, tmp_path):
    code, out, err = run_cli(
        "bench",
        tiny_onnx,
        "--gen-len",
        "4",
        "--prompt-len",
        "6",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    (row,) = report["results"]
    assert row["backend"] == "onnxruntime" and row["decode_tok_s"] > 0 and row["peak_rss"] > 0
    assert len(row["token_ids"]) == 2 and all(len(t) == 4 for t in row["token_ids"])


@pytest.mark.slow
def test_bench_hf_folder_converts_and_agrees(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path))
    from keishiki.runtimes.bench import bench

    report = bench(
        tiny_llama,
        ["torch", "onnxruntime", "torchscript"],
        prompt_len=6,
        gen_len=4,
        batch=2,
        repeats=1,
        cache_dir=tmp_path / "bench",
    )
    assert [r["backend"] for r in report["results"]] == ["torch", "onnxruntime", "torchscript"]
    assert report["agreement"]["reference"] == "torch"
    for name in ("onnxruntime", "torchscript"):
        assert report["agreement"][name] == {"identical": 2, "of": 2, "first_difference_at": None}
    code, out, err = run_cli(
        "bench",
        tiny_llama,
        "--backends",
        "onnxruntime",
        "--gen-len",
        "3",
        "--prompt-len",
        "4",
        "--repeats",
        "1",
    )
    assert code == 0, err
    assert "decode tok/s" in out and "onnxruntime" in out


def test_bench_errors(tiny_llama, tmp_path):
    assert "no such file or folder" in _error("bench", tmp_path / "nope")
    assert "--batch must be at least 1" in _error("bench", tiny_llama, "--batch", "0")
    assert "unknown backend 'tensorrt'" in _error("bench", tiny_llama, "--backends", "tensorrt")
    assert "cannot generate text" in _error("bench", tiny_llama / "model.safetensors")
    assert "not a causal language model graph" in _error(
        "bench", corpus_path(NON_LM_ONNX), "--repeats", "1"
    )


def test_run_logprobs_text_and_json(tiny_onnx, llms):
    code, out, err = run_cli(
        "run",
        tiny_onnx,
        "-p",
        "Hello",
        "-t",
        "0",
        "-n",
        "3",
        "--logprobs",
        "2",
        "--prompt-logprobs",
        "1",
        "--json",
    )
    assert code == 0, err
    [request] = json.loads(out)["outputs"]
    completion = request["outputs"][0]
    reference = (
        llms["onnxruntime"]
        .generate(
            ["Hello"],
            __import__("keishiki").SamplingParams(temperature=0, max_tokens=3, logprobs=2),
        )[0]
        .outputs[0]
    )
    assert completion["token_ids"] == reference.token_ids
    for step, token in zip(completion["logprobs"], completion["token_ids"]):
        assert step[str(token)]["rank"] == 1 and len(step) == 2  # JSON keys are strings
    assert abs(completion["cumulative_logprob"] - reference.cumulative_logprob) < 1e-6
    assert request["prompt_logprobs"][0] is None
    assert len(request["prompt_logprobs"]) == len(request["prompt_token_ids"])
    code, out, err = run_cli(
        "run", tiny_onnx, "-p", "Hello", "-t", "0", "-n", "3", "--logprobs", "1"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("--- logprobs (cumulative ") and len(lines) == 5
    assert all(" rank 1" in line for line in lines[2:])
    code, _, err = run_cli("run", tiny_onnx, "-p", "Hello", "--logprobs", "-2")
    assert code == 2 and "logprobs must be None or a non-negative integer" in err


def test_bench_worker_reports_its_own_peak_memory():
    """ru_maxrss of a spawned child starts at its parent's peak: a worker reported the CLI's
    394 MiB where it used 77.  The worker's own high-water mark is what bench shows."""
    import subprocess
    import sys

    ballast = bytearray(400 << 20)  # the parent's peak: 400 MiB touched
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from keishiki.runtimes.bench import _peak_rss; print(_peak_rss())"
    child = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert 0 < child < 200 << 20
    del ballast
