"""numpy -> safetensors at the edges: 0-d arrays, and dtypes safetensors cannot hold."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli


def test_zero_dim_array_converts_with_its_shape(tmp_path):
    from safetensors.numpy import load_file

    src = tmp_path / "scalar.npy"
    np.save(src, np.float32(3.5))
    out = tmp_path / "s.safetensors"
    code, _, err = run_cli("convert", src, out, "--to", "safetensors", "-q")
    assert code == 0, err
    got = load_file(str(out))["array"]
    assert got.shape == () and got == np.float32(3.5)


@pytest.mark.parametrize(
    "array",
    [np.array(["ab", "c"]), np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8")])],
    ids=["str", "structured"],
)
def test_unsupported_dtype_is_one_line_error(tmp_path, array):
    src = tmp_path / "a.npy"
    np.save(src, array)
    out = tmp_path / "a.safetensors"
    code, _, err = run_cli("convert", src, out, "--to", "safetensors", "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "no safetensors equivalent" in err and "internal error" not in err
    assert not out.exists()


def test_to_safetensors_still_a_key_error_for_old_callers():
    from keishiki.core import dtypes

    with pytest.raises(KeyError) as exc:
        dtypes.to_safetensors("str64")
    assert str(exc.value).startswith("dtype 'str64'")
