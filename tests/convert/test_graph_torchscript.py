"""-> torchscript: traced HF causal LMs (with and without KV cache), pickled modules (--trust)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.convert.graph_conftest import export_once, torch_greedy_ids

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _convert(src, out, **options):
    from keishiki._convert import convert

    return convert(src, out, quiet=True, **options).to_dict()


@pytest.fixture(scope="module")
def ts_folder(tiny_llama):
    return export_once(
        "ts-folder", lambda folder: (folder, _convert(tiny_llama, folder, to="torchscript"))
    )


@pytest.fixture(scope="module")
def ts_kv_file(tiny_llama):
    def make(folder):
        folder.mkdir(parents=True)
        return folder / "kv.pt", _convert(
            tiny_llama, folder / "kv.pt", to="torchscript", method="trace-kv"
        )

    return export_once("ts-kv", make)


@pytest.fixture(scope="module")
def module_pickle(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    folder = tmp_path_factory.mktemp("pickles")
    torch.save(model, folder / "whole.pt")
    torch.save(model.state_dict(), folder / "state.pt")
    return folder, model


def test_traced_folder_loads_and_matches_generate(tiny_llama, ts_folder):
    folder, report = ts_folder
    step = report["steps"][0]
    assert report["path"] == ["hf-model -> torchscript"]
    assert step["verify"]["passed"] and step["verify"]["tokens_match"]
    assert step["verify"]["max_abs_diff"] < 1e-5 and step["verify"]["kv_cache"] is False
    for name in ("model.pt", "tokenizer.json", "config.json", "generation_config.json"):
        assert (folder / name).is_file()
    ts = torch.jit.load(str(folder / "model.pt"))
    prompt, expected = torch_greedy_ids(tiny_llama)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(20):  # no cache: the prefix is recomputed each step
            ids = torch.cat([ids, ts(ids)[:, -1:].argmax(-1)], dim=1)
    assert ids[0, len(prompt) :].tolist() == expected
    # batch size is not baked in (traced with 2 rows even for a 1x8 example input)
    assert ts(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 384)


def test_archive_describes_its_interface(ts_folder, ts_kv_file):
    from keishiki._convert.torchscript_export import read_meta

    meta = read_meta(ts_folder[0] / "model.pt")
    assert meta["kind"] == "causal-lm" and meta["input_names"] == ["input_ids"]
    assert meta["output_names"] == ["logits"] and meta["kv_cache"] is False
    kv = read_meta(ts_kv_file[0])
    assert kv["kind"] == "causal-lm-kv" and kv["kv_cache"] is True
    assert kv["input_names"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert kv["output_names"][1] == "present.0.key" and kv["n_layers"] == 2


def test_trace_kv_file_decodes_with_cache(tiny_llama, ts_kv_file):
    path, report = ts_kv_file
    step = report["steps"][0]
    assert step["verify"]["passed"] and step["verify"]["kv_cache"] is True
    assert step["verify"]["max_abs_diff"] < 1e-5
    assert path.is_file() and not (path.parent / "tokenizer.json").exists()  # a file OUT
    ts = torch.jit.load(str(path))
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    ids = torch.tensor([[1, 2, 3]])
    out = ts(ids, torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], *empty)
    assert out[0].shape == (1, 3, 384) and out[1].shape == (1, 2, 3, 16)


def test_script_method_is_a_clear_error_for_hf_models(tiny_llama, tmp_path):
    code, _, err = run_cli(
        "convert", tiny_llama, tmp_path / "s.pt", "--to", "torchscript", "--method", "script"
    )
    assert code == 2
    assert "torch.jit.script cannot compile" in err and "--method trace" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.pt").exists()


def test_module_pickle_needs_trust(module_pickle, tmp_path):
    folder, _ = module_pickle
    code, _, err = run_cli(
        "convert",
        folder / "whole.pt",
        tmp_path / "m.pt",
        "--to",
        "torchscript",
        "--example-input",
        "2x4:float32",
    )
    # the load gate: unpickling a whole module runs code keishiki cannot vouch for
    assert code == 1 and "--trust-remote-code" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("method", ["trace", "script"])
def test_module_pickle_with_trust(module_pickle, tmp_path, method):
    folder, model = module_pickle
    code, out, err = run_cli(
        "convert",
        folder / "whole.pt",
        tmp_path / "m.pt",
        "--to",
        "torchscript",
        "--trust",
        "--method",
        method,
        "--example-input",
        "2x4:float32",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    step = json.loads(out)["steps"][0]
    assert step["verify"]["passed"] and step["verify"]["max_abs_diff"] == 0.0
    assert any("the pickle's code ran while loading it" in w for w in step["warnings"])
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(5, 4)
    assert torch.equal(ts(x), model(x))


def test_script_without_example_input_compares_weights(module_pickle, tmp_path):
    """--method script needs no input to export; verification then compares the weights
    (it ran the module on a default token-id input and died as an internal error)."""
    folder, model = module_pickle
    code, out, err = run_cli(
        "convert",
        folder / "whole.pt",
        tmp_path / "m.pt",
        "--to",
        "torchscript",
        "--trust-remote-code",
        "--method",
        "script",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    verify = json.loads(out)["steps"][0]["verify"]
    assert verify["method"] == "state-dict" and verify["passed"] and verify["n_compared"] == 4
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(5, 4)
    assert torch.equal(ts(x), model(x))


def test_state_dict_pickle_is_refused_with_the_reason(module_pickle, tmp_path):
    folder, _ = module_pickle
    code, _, err = run_cli(
        "convert", folder / "state.pt", tmp_path / "m.pt", "--to", "torchscript", "--trust"
    )
    assert code == 2 and "state_dict" in err and "not a pickled nn.Module" in err


def test_bad_example_input(module_pickle, tmp_path):
    folder, _ = module_pickle
    code, _, err = run_cli(
        "convert",
        folder / "whole.pt",
        tmp_path / "m.pt",
        "--to",
        "torchscript",
        "--trust",
        "--example-input",
        "banana",
    )
    assert code == 2 and "expected SHAPE:DTYPE" in err
    code, _, err = run_cli(
        "convert",
        folder / "whole.pt",
        tmp_path / "m.pt",
        "--to",
        "torchscript",
        "--trust",
        "--example-input",
        "2x5:float32",
    )
    assert code == 2 and "tracing torch.nn.modules.container.Sequential" in err


def test_parse_example_input():
    from keishiki._convert.torchscript_export import parse_example_input

    assert parse_example_input("1x8:int64") == [((1, 8), "int64")]
    assert parse_example_input("1x3x4x4, 2:int32") == [((1, 3, 4, 4), "float32"), ((2,), "int32")]
