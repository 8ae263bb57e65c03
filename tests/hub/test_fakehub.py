"""The loopback fake Hub checked against huggingface_hub's own clients: every route it serves
answers as those clients expect (list_repo_files, get_paths_info, file_exists, model_info
with sizes, HfFileSystem info and ranged reads, hf_hub_download)."""

from __future__ import annotations

import pytest

from . import loopback
from .conftest import TINY


def test_fake_hub_answers_huggingface_hub_itself(hub, hub_env, tmp_path):
    """The fake Hub against huggingface_hub's own clients: each route it claims to serve."""
    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download

    files = hub.repos[TINY].files
    api = HfApi()
    assert sorted(api.list_repo_files(TINY)) == sorted(files)
    assert [p.path for p in api.get_paths_info(TINY, ["config.json", "absent"])] == ["config.json"]
    assert api.file_exists(TINY, "model.safetensors") and not api.file_exists(TINY, "absent")
    assert api.model_info(TINY, files_metadata=True).siblings[0].size == len(
        files[sorted(files)[0]]
    )
    fs = HfFileSystem(skip_instance_cache=True)
    assert fs.info(f"{TINY}/config.json", refresh=True)["size"] == len(files["config.json"])
    assert fs.read_block(f"{TINY}/model.safetensors", 8, 16) == files["model.safetensors"][8:24]
    local = hf_hub_download(TINY, "tokenizer.json", local_dir=tmp_path / "one")
    assert open(local, "rb").read() == files["tokenizer.json"]
    assert [r.method for r in hub.log if r.path.endswith("/paths-info/main")] == ["POST", "POST"]


@pytest.mark.parametrize("address", [("10.255.255.1", 443), ("huggingface.co", 443)])
def test_loopback_guard_refuses_the_internet(address):
    import socket

    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(ConnectionRefusedError, match="test guard"),
    ):
        sock.connect(address)
    assert loopback.ATTEMPTS == [str(address)]
    loopback.ATTEMPTS.clear()  # seen and refused: the autouse guard's check stays for others
