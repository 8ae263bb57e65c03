"""A truncated Core ML model is an error, not a whole "coreml" model (found by the QA sweep over
truncated copies of every corpus file)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import corpus_path, run_cli

MLMODEL = "other/coreml/basic-pitch-0.4.0/nmp.mlpackage/Data/com.apple.CoreML/model.mlmodel"


@pytest.mark.parametrize("keep", [8, 64, 512, -16, -1])
def test_truncated_mlmodel_is_corrupt(tmp_path, keep):
    data = corpus_path(MLMODEL).read_bytes()
    path = tmp_path / "model.mlmodel"
    path.write_bytes(data[:keep])
    code, _, err = run_cli("info", path)
    assert code == 2 and err.count("\n") == 1, err
    assert "truncated" in err


def test_truncated_mlpackage_root_model_is_corrupt(tmp_path):
    package = tmp_path / "nmp.mlpackage"
    shutil.copytree(corpus_path("other/coreml/basic-pitch-0.4.0/nmp.mlpackage"), package)
    model = package / "Data/com.apple.CoreML/model.mlmodel"
    model.write_bytes(model.read_bytes()[:-100])
    code, _, err = run_cli("info", package)
    assert code == 2 and "truncated" in err, err


def test_whole_mlmodel_still_reads():
    code, out, err = run_cli("info", "--json", corpus_path(MLMODEL))
    assert code == 0, err
    assert '"format": "coreml"' in out
