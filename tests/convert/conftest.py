"""Fixtures for the weight-edge tests: small state dicts saved the ways people save them."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def state_dict():
    """Tied embedding/head, a transposed (Fortran-order) weight, a strided view, bf16, ints."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 4, generator=g)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "emb.weight": emb,
        "head.weight": emb,  # tied: same storage
        "lin.weight": torch.randn(3, 5, generator=g).t(),  # non-contiguous (column-major)
        "view": base[:, 1:4],  # a strided view into a bigger storage
        "half": torch.randn(7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 3, generator=g).to(torch.float16),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
        "scalar": torch.tensor(3.5),
    }


@pytest.fixture(scope="session")
def pt_files(tmp_path_factory, state_dict) -> dict[str, Path]:
    """The state dict as a zip and a legacy torch.save file, and a training checkpoint."""
    import torch

    folder = tmp_path_factory.mktemp("pt")
    zip_path, legacy = folder / "sd.pt", folder / "sd_legacy.pt"
    torch.save(state_dict, zip_path)
    torch.save(state_dict, legacy, _use_new_zipfile_serialization=False)
    ckpt = folder / "ckpt.pt"
    torch.save(
        {
            "model": {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2)},
            "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}},
            "epoch": 3,
        },
        ckpt,
    )
    module = folder / "module.pt"
    torch.save(
        torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)), module
    )
    return {"zip": zip_path, "legacy": legacy, "ckpt": ckpt, "module": module}
