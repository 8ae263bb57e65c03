"""Every command on a real Hugging Face cache snapshot, as ``keishiki pull`` leaves it: a
``models--org--name/snapshots/<commit>/`` folder whose files are symlinks into
``../../blobs/`` (the one way out of a model's folder the path gate sanctions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

from . import loopback
from .conftest import BOTH, EVIL, TINY
from .fakehub import FakeHub, Repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def snapshots(repo_files, tmp_path_factory) -> dict[str, Path]:
    """TINY, BOTH and EVIL pulled once into a cache of this module (the fake Hub is stopped before
    any command runs: they read the cache only)."""
    from huggingface_hub import constants

    import keishiki

    home = tmp_path_factory.mktemp("hf-home")
    hub = FakeHub()
    for repo_id in (TINY, BOTH, EVIL):
        hub.add(Repo(repo_id, dict(repo_files[repo_id])))
    loopback.install()
    hub.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(constants, "ENDPOINT", hub.endpoint)
            mp.setattr(
                constants,
                "HUGGINGFACE_CO_URL_TEMPLATE",
                hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            )
            mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
            mp.setattr(constants, "HF_HUB_OFFLINE", False)
            folders = {
                repo_id: keishiki.pull(repo_id, quiet=True).folder for repo_id in (TINY, BOTH, EVIL)
            }
    finally:
        hub.stop()
        loopback.uninstall()
    out = tmp_path_factory.mktemp("outputs")
    return {"snap": folders[TINY], "both": folders[BOTH], "evil": folders[EVIL], "out": out}


def _params(out: str) -> int:
    return json.loads(out)["n_parameters"]


def _tokens(out: str) -> list[int]:
    return json.loads(out)["outputs"][0]["outputs"][0]["token_ids"]


def _read_back(out: str) -> bool:
    """Every step of a ``convert --json`` report passed its read-back verification (the JSON,
    not the table: a table cell folds on a narrow console)."""
    steps = json.loads(out)["steps"]
    return bool(steps) and all(
        s["verify"]["passed"] and s["verify"]["method"] == "read-back" for s in steps
    )


# (id, argv with {snap}/{evil}/{orig}/{out} placeholders, exit code, check of stdout)
CASES = [
    ("info", ["info", "{snap}", "--json"], 0, lambda o: _params(o) == 123_200),
    (
        "info-file",
        ["info", "{snap}/model.safetensors", "--json"],
        0,
        lambda o: _params(o) == 123_200,
    ),
    ("tensors", ["tensors", "{snap}", "--json"], 0, lambda o: len(json.loads(o)["tensors"]) == 21),
    ("scan", ["scan", "{snap}"], 0, lambda o: "verdict: safe (1 files scanned)" in o),
    (
        "convert-safetensors",
        ["convert", "{snap}", "{out}/m.safetensors", "--to", "safetensors", "--json"],
        0,
        _read_back,
    ),
    (
        "convert-gguf",
        ["convert", "{snap}", "{out}/m.gguf", "--to", "gguf", "--json"],
        0,
        _read_back,
    ),
    (
        "compare",
        ["compare", "{snap}", "{orig}", "--json"],
        0,
        lambda o: (json.loads(o)["n_pairs"], json.loads(o)["verdict"]) == (21, "identical"),
    ),
    ("map", ["map", "{snap}", "{orig}", "--json"], 0, lambda o: len(json.loads(o)["pairs"]) == 21),
    (
        "run",
        ["run", "{snap}", "-p", "hello", "-n", "3", "-t", "0", "--backend", "torch", "--json"],
        0,
        lambda o: len(_tokens(o)) == 3,
    ),
    # a pickle in a snapshot's subfolder: its link leads to the repository's blobs/ too
    (
        "info-pickle-in-subfolder",
        ["info", "{both}/onnx/pytorch_model.bin", "--json"],
        0,
        lambda o: _params(o) == 123_200 and json.loads(o)["safety"]["verdict"] == "safe",
    ),
    ("scan-both", ["scan", "{both}"], 0, lambda o: "verdict: safe (3 files scanned)" in o),
    (
        "convert-pickle",
        [
            "convert",
            "{both}/pytorch_model.bin",
            "{out}/from-bin.safetensors",
            "--to",
            "safetensors",
            "--json",
        ],
        0,
        _read_back,
    ),
    (
        "compare-pickle-safetensors",
        ["compare", "{both}/pytorch_model.bin", "{snap}/model.safetensors"],
        0,
        lambda o: "21 pairs (21 identical)" in o,
    ),
    (
        "info-evil",
        ["info", "{evil}", "--json"],
        0,
        lambda o: json.loads(o)["safety"]["verdict"] == "dangerous",
    ),
    ("scan-evil", ["scan", "{evil}"], 1, lambda o: "verdict: dangerous" in o),
    (
        "run-evil",
        ["run", "{evil}", "-p", "hi", "-n", "1", "--backend", "torch"],
        1,
        lambda o: o == "",
    ),
]


@pytest.mark.parametrize("argv,code,check", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_command_on_cache_snapshot(snapshots, tiny_llama, marker, argv, code, check):
    if "run" in argv:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    places = dict(snapshots, orig=tiny_llama)
    got, out, err = run_cli(*[a.format(**places) for a in argv])
    assert got == code, err
    assert check(out), out[-2000:]
    assert not marker.exists()


def test_snapshot_is_symlinks_into_blobs(snapshots):
    snap = snapshots["snap"]
    assert snap.parent.name == "snapshots" and snap.parent.parent.name.startswith("models--")
    links = sorted(p.name for p in snap.iterdir() if p.is_symlink())
    assert links == sorted(p.name for p in snap.iterdir()) and "model.safetensors" in links
    assert {(snap / n).resolve().parent for n in links} == {snap.parent.parent / "blobs"}


def test_run_on_snapshot_matches_the_original_folder(snapshots, tiny_llama):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    argv = ["-p", "hello", "-n", "5", "-t", "0", "--backend", "torch", "--json"]
    results = [run_cli("run", folder, *argv) for folder in (snapshots["snap"], tiny_llama)]
    assert [code for code, _o, _e in results] == [0, 0]
    assert _tokens(results[0][1]) == _tokens(results[1][1])
