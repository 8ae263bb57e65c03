"""The pure parts of the Hub code: which files ``--prefer-safetensors`` skips, literal globs,
and ``REPO@REV`` / ``hf://`` parsing."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from keishiki.errors import InvalidRequest
from keishiki.hub._hf import RepoSpec, parse_hf_path, parse_repo
from keishiki.hub.select import literal_pattern, skipped_for_safetensors


@pytest.mark.parametrize(
    "files,skipped",
    [
        (["model.safetensors", "pytorch_model.bin"], ["pytorch_model.bin"]),
        (["pytorch_model.bin", "config.json"], []),  # nothing else to load
        (
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
                "pytorch_model.bin.index.json",
            ],
            ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
        ),
        (
            [
                "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.bin",
                "vae/diffusion_pytorch_model.bin",
            ],
            ["unet/diffusion_pytorch_model.bin"],
        ),  # per folder
        (
            [
                "model.safetensors",
                "training_args.bin",
                "optimizer.pt",
                "rng_state.pth",
                "model.ckpt",
                "weights.PT",
            ],
            ["model.ckpt", "optimizer.pt", "rng_state.pth", "training_args.bin", "weights.PT"],
        ),
        (["onnx/model.safetensors", "pytorch_model.bin"], []),  # another model's folder
        (["model.safetensors", "tokenizer.json", "model.onnx", "model.gguf"], []),
    ],
)
def test_skipped_for_safetensors(files, skipped):
    assert skipped_for_safetensors(files) == skipped


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weird[1].bin", "a*b?.pt", "dir/[x].pth"])
def test_literal_pattern_matches_only_itself(name):
    pattern = literal_pattern(name)
    assert fnmatchcase(name, pattern)
    others = [name + "x", "x" + name, name.replace(".", "_"), "pytorch_model-1.bin", "a1b2.pt"]
    assert [o for o in others if fnmatchcase(o, pattern)] == []


@pytest.mark.parametrize(
    "text,spec",
    [
        ("org/name", RepoSpec("org/name")),
        ("org/name@main", RepoSpec("org/name", "main")),
        ("org/name@refs/pr/3", RepoSpec("org/name", "refs/pr/3")),
        (
            "org/name@0123456789abcdef0123456789abcdef01234567",
            RepoSpec("org/name", "0123456789abcdef0123456789abcdef01234567"),
        ),
    ],
)
def test_parse_repo(text, spec):
    assert parse_repo(text) == spec


@pytest.mark.parametrize("text", ["name", "org/name/extra", "org/", "/name", "org/name@"])
def test_parse_repo_refuses(text):
    with pytest.raises(InvalidRequest, match="is not a Hub repository"):
        parse_repo(text)


@pytest.mark.parametrize(
    "path,spec",
    [
        ("hf://org/name", RepoSpec("org/name")),
        ("hf://org/name@v1.0", RepoSpec("org/name", "v1.0")),
        ("hf://org/name/model-q4_k_m.gguf", RepoSpec("org/name", None, "model-q4_k_m.gguf")),
        (
            "hf://org/name@refs/pr/3/sub/model.safetensors",
            RepoSpec("org/name", "refs/pr/3", "sub/model.safetensors"),
        ),
        ("hf://models/org/name@main", RepoSpec("org/name", "main")),
    ],
)
def test_parse_hf_path(path, spec):
    pytest.importorskip("huggingface_hub")
    assert parse_hf_path(path) == spec


@pytest.mark.parametrize(
    "path,message",
    [
        ("hf://datasets/org/data", "a dataset repository"),
        ("hf://spaces/org/app", "a space repository"),
        ("hf://", "not an hf:// path"),
    ],
)
def test_parse_hf_path_refuses(path, message):
    pytest.importorskip("huggingface_hub")
    with pytest.raises(InvalidRequest, match=message):
        parse_hf_path(path)
