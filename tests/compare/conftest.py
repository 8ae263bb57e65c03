"""Fixtures for compare/map/view: one small nn.Sequential saved in several formats."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def seq_state_dict():
    """{name: numpy array} of Sequential(Linear(4, 8), ReLU, Linear(8, 3)), fixed seed."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return model, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def seq_files(tmp_path_factory, seq_state_dict) -> dict[str, Path]:
    """The same weights as safetensors, torch.save zip, with wrapper prefixes, perturbed,
    bfloat16, and as a constant-folded ONNX export (``onnx::MatMul_<N>`` names)."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    model, sd = seq_state_dict
    root = tmp_path_factory.mktemp("seq")
    files = {
        "safetensors": root / "seq.safetensors",
        "pt": root / "seq.pt",
        "module": root / "seq_module.pt",
        "compiled": root / "seq_compiled.safetensors",
        "perturbed": root / "seq_perturbed.safetensors",
        "bf16": root / "seq_bf16.pt",
        "extra": root / "seq_extra.safetensors",
        "shape": root / "seq_shape.safetensors",
        "onnx": root / "seq.onnx",
    }
    save_file(sd, str(files["safetensors"]))
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, files["pt"])
    torch.save({"module." + k: torch.from_numpy(v) for k, v in sd.items()}, files["module"])
    save_file({"_orig_mod.model." + k: v for k, v in sd.items()}, str(files["compiled"]))
    perturbed = dict(sd)
    perturbed["2.weight"] = sd["2.weight"].copy()
    perturbed["2.weight"][1, 2] += 1e-3
    save_file(perturbed, str(files["perturbed"]))
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}, files["bf16"])
    save_file({**sd, "3.weight": np.ones((2, 2), np.float32)}, str(files["extra"]))
    save_file({**sd, "0.bias": sd["0.bias"][:4].copy()}, str(files["shape"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a 3-D input makes the TorchScript exporter emit MatMul (2-D gives Gemm, names kept)
        torch.onnx.export(
            model,
            (torch.randn(1, 2, 4),),
            str(files["onnx"]),
            dynamo=False,
            do_constant_folding=True,
        )
    return files


@pytest.fixture(scope="session")
def llama_gguf_pair(tmp_path_factory) -> tuple[Path, Path, dict]:
    """HF-named llama weights (safetensors) and the same in a GGUF written with
    ``gguf.GGUFWriter`` the way llama.cpp does (see :func:`write_llama_gguf_pair`)."""
    pytest.importorskip("gguf")
    return write_llama_gguf_pair(tmp_path_factory.mktemp("llama-gguf"))


def write_llama_gguf_pair(root: Path, up_scale: float = 1.0) -> tuple[Path, Path, dict]:
    """``root/hf.safetensors`` and ``root/model.gguf``: GGUF names, Q/K rows permuted for
    rotary, ffn_up in Q8_0 (scaled by ``up_scale``); returns (hf, gguf, state dict)."""
    import gguf
    from safetensors.numpy import save_file

    from keishiki._convert.gguf_archs import ARCHS
    from keishiki._convert.gguf_names import permute

    gguf_name = ARCHS["llama"].name_maps(1)[0]

    rng = np.random.default_rng(0)
    hidden, n_head, n_kv, head_dim = 16, 4, 2, 4
    sd = {
        "model.embed_tokens.weight": rng.standard_normal((32, hidden)),
        "model.layers.0.input_layernorm.weight": rng.standard_normal(hidden),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((n_head * head_dim, hidden)),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((n_kv * head_dim, hidden)),
        "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((n_kv * head_dim, hidden)),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((24, 32)) * up_scale,
        "model.norm.weight": rng.standard_normal(hidden),
    }
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    hf, gg = root / "hf.safetensors", root / "model.gguf"
    save_file(sd, str(hf))
    writer = gguf.GGUFWriter(str(gg), "llama")
    writer.add_block_count(1)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    for name, value in sd.items():
        if "q_proj" in name:
            value = permute(value, n_head)
        elif "k_proj" in name:
            value = permute(value, n_kv)
        if "up_proj" in name:
            q8 = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name[name], q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name[name], value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf, gg, sd
