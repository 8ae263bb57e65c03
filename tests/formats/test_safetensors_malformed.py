"""Malformed safetensors: keishiki refuses exactly what the ``safetensors`` library refuses.

Each case is built on the spot and opened by both the real ``safetensors.safe_open`` and
keishiki's reader; their verdicts (refuse or accept) must agree, and the expected verdict is
spelled out so a change in either shows up as a named failure.
"""

from __future__ import annotations

import json
import struct

import pytest

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.errors import CorruptFile, KeishikiError
from keishiki.formats import safetensors as st
from tests.conftest import run_cli

safetensors = pytest.importorskip("safetensors")


def _file(header=None, data: bytes = b"", raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _t(begin: int, end: int, dtype: str = "U8", shape=None) -> dict:
    return {
        "dtype": dtype,
        "shape": [end - begin] if shape is None else shape,
        "data_offsets": [begin, end],
    }


def _entry(body: str) -> bytes:
    return b'{"a":{' + body.encode() + b"}}"


OK, NO = "accept", "refuse"
CASES = {
    "plain": (OK, _file({"a": _t(0, 4)}, b"abcd")),
    "empty_header": (OK, _file({}, b"")),
    "offsets_out_of_order_in_json": (OK, _file({"b": _t(4, 8), "a": _t(0, 4)}, b"abcdefgh")),
    "zero_sized_tensors_share_offsets": (
        OK,
        _file({"z": _t(0, 0, shape=[0]), "y": _t(0, 0, shape=[0])}),
    ),
    "gap_between_tensors": (NO, _file({"a": _t(0, 4), "b": _t(6, 8)}, b"abcdefgh")),
    "overlapping_tensors": (NO, _file({"a": _t(0, 4), "b": _t(2, 6)}, b"abcdef")),
    "first_tensor_not_at_0": (NO, _file({"a": _t(4, 8)}, b"abcdefgh")),
    "end_before_begin": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[0],"data_offsets":[4,0]')),
    ),
    "data_offsets_beyond_file": (NO, _file({"a": _t(0, 8)}, b"abcd")),
    "bytes_after_last_tensor": (NO, _file({"a": _t(0, 4)}, b"abcdEXTRA")),
    "empty_header_with_data": (NO, _file({}, b"xx")),
    "size_disagrees_with_shape": (NO, _file({"a": _t(0, 4, "F32", [2])}, b"abcd")),
    "shape_product_overflows": (
        NO,
        _file(
            None,
            b"abcd",
            raw=_entry('"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,4]'),
        ),
    ),
    "shape_overflows_before_a_zero": (
        NO,
        _file(
            None, raw=_entry('"dtype":"U8","shape":[2,18446744073709551615,0],"data_offsets":[0,0]')
        ),
    ),
    "huge_dim_times_zero": (
        OK,
        _file(
            None, raw=_entry('"dtype":"U8","shape":[18446744073709551615,0],"data_offsets":[0,0]')
        ),
    ),
    "sub_byte_dtype_odd_count": (NO, _file({"a": _t(0, 1, "F4", [1])}, b"a")),
    "sub_byte_dtype_even_count": (OK, _file({"a": _t(0, 1, "F4", [2])}, b"a")),
    "f6_dtype": (OK, _file({"a": _t(0, 3, "F6_E2M3", [4])}, b"abc")),
    "unknown_dtype": (NO, _file({"a": _t(0, 4, "X9")}, b"abcd")),
    "lowercase_dtype": (NO, _file({"a": _t(0, 4, "u8")}, b"abcd")),
    "dtype_as_enum_map": (
        OK,
        _file(None, b"abcd", raw=_entry('"dtype":{"U8":null},"shape":[4],"data_offsets":[0,4]')),
    ),
    "metadata_int_value": (NO, _file({"__metadata__": {"x": 1}, "a": _t(0, 4)}, b"abcd")),
    "metadata_nested_value": (NO, _file({"__metadata__": {"x": {"y": "z"}}})),
    "metadata_list": (NO, _file({"__metadata__": ["a"]})),
    "metadata_string": (NO, _file({"__metadata__": "x"})),
    "metadata_null": (OK, _file({"__metadata__": None, "a": _t(0, 4)}, b"abcd")),
    "metadata_twice": (NO, _file(None, raw=b'{"__metadata__":{"x":"1"},"__metadata__":{}}')),
    "metadata_key_twice_last_wins": (OK, _file(None, raw=b'{"__metadata__":{"k":"1","k":"2"}}')),
    "tensor_name_twice_last_wins_valid": (
        OK,
        _file(
            None,
            b"abcd",
            raw=(
                b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                b'"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
            ),
        ),
    ),
    "tensor_name_twice_last_wins_invalid": (
        NO,
        _file(
            None,
            b"abcdefgh",
            raw=(
                b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                b'"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}'
            ),
        ),
    ),
    # serde types every value of a repeated name as it reads it, keeps the last one
    "tensor_name_twice_first_unknown_dtype": (
        NO,
        _file(
            None,
            b"abcd",
            raw=(
                b'{"a":{"dtype":"NOPE","shape":[4],"data_offsets":[0,4]},'
                b'"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
            ),
        ),
    ),
    "tensor_name_twice_first_shape_junk": (
        NO,
        _file(
            None,
            b"abcd",
            raw=(
                b'{"a":{"dtype":"U8","shape":"junk","data_offsets":[0,4]},'
                b'"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
            ),
        ),
    ),
    "tensor_name_twice_first_typed_but_out_of_file": (
        OK,
        _file(
            None,
            b"abcd",
            raw=(
                b'{"a":{"dtype":"U8","shape":[99],"data_offsets":[50,149]},'
                b'"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
            ),
        ),
    ),
    "field_twice": (
        NO,
        _file(
            None, b"abcd", raw=_entry('"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]')
        ),
    ),
    "unknown_field_ignored": (
        OK,
        _file(
            None,
            b"abcd",
            raw=_entry(
                '"dtype":"U8","shape":[4],"data_offsets":[0,4],"zz":[1.5,{"q":null}],"zz":2'
            ),
        ),
    ),
    "missing_field": (NO, _file(None, b"abcd", raw=_entry('"dtype":"U8","data_offsets":[0,4]'))),
    "entry_as_3_array": (OK, _file(None, b"abcd", raw=b'{"a":["U8",[4],[0,4]]}')),
    "entry_as_4_array": (NO, _file(None, raw=b'{"a":["U8",[0],[0,0],[]]}')),
    "entry_is_string": (NO, _file(None, raw=b'{"a":"U8"}')),
    "three_offsets": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[4],"data_offsets":[0,4,4]')),
    ),
    "offsets_as_map": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[4],"data_offsets":{"0":0,"1":4}')),
    ),
    "float_offset": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[4],"data_offsets":[0,4.0]')),
    ),
    "exponent_offset": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[4],"data_offsets":[0,4e0]')),
    ),
    "string_offset": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[4],"data_offsets":[0,"4"]')),
    ),
    "bool_dimension": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[true,4],"data_offsets":[0,4]')),
    ),
    "negative_dimension": (
        NO,
        _file(None, b"abcd", raw=_entry('"dtype":"U8","shape":[-4],"data_offsets":[0,4]')),
    ),
    "minus_zero_dimension": (
        NO,
        _file(None, raw=_entry('"dtype":"U8","shape":[-0],"data_offsets":[0,0]')),
    ),
    "offset_above_u64": (
        NO,
        _file(
            None,
            b"abcd",
            raw=_entry('"dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551620]'),
        ),
    ),
    "header_is_list": (NO, _file(None, raw=b"[]")),
    "header_is_string": (NO, _file(None, raw=b'"x"')),
    "trailing_spaces": (
        OK,
        _file(None, b"abcd", raw=json.dumps({"a": _t(0, 4)}).encode() + b"    "),
    ),
    "trailing_newline_tab": (
        OK,
        _file(None, b"abcd", raw=json.dumps({"a": _t(0, 4)}).encode() + b"\n\t\r"),
    ),
    "leading_space": (OK, _file(None, b"abcd", raw=b" " + json.dumps({"a": _t(0, 4)}).encode())),
    "trailing_nul_padding": (
        NO,
        _file(None, b"abcd", raw=json.dumps({"a": _t(0, 4)}).encode() + b"\0\0"),
    ),
    "trailing_garbage": (
        NO,
        _file(None, b"abcd", raw=json.dumps({"a": _t(0, 4)}).encode() + b"xx"),
    ),
    "second_json_value": (NO, _file(None, raw=b"{}{}")),
    "utf8_bom": (
        NO,
        _file(None, b"abcd", raw=b"\xef\xbb\xbf" + json.dumps({"a": _t(0, 4)}).encode()),
    ),
    "utf16_header": (NO, _file(None, raw="{}".encode("utf-16-le"))),
    "invalid_utf8": (NO, _file(None, raw=b'{"__metadata__":{"k":"\xff"}}')),
    "nan_constant": (NO, _file(None, raw=b'{"__metadata__":{},"z":NaN}')),
    "float_out_of_range": (
        NO,
        _file(None, raw=_entry('"dtype":"U8","shape":[0],"data_offsets":[0,0],"z":1.5e400')),
    ),
    "lone_surrogate_name": (
        NO,
        _file(None, b"abcd", raw=b'{"\\ud800":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'),
    ),
    "surrogate_pair_value": (OK, _file(None, raw=b'{"__metadata__":{"k":"\\ud83d\\ude00"}}')),
    "control_character": (NO, _file(None, raw=b'{"__metadata__":{"k":"a\x01b"}}')),
    "nesting_127": (
        OK,
        _file(
            None,
            raw=_entry(
                '"dtype":"U8","shape":[0],"data_offsets":[0,0],"z":' + "[" * 125 + "]" * 125
            ),
        ),
    ),
    "nesting_128": (
        NO,
        _file(
            None,
            raw=_entry(
                '"dtype":"U8","shape":[0],"data_offsets":[0,0],"z":' + "[" * 126 + "]" * 126
            ),
        ),
    ),
    "header_length_past_end": (NO, struct.pack("<Q", 64) + b"{}"),
    "header_length_zero": (NO, struct.pack("<Q", 0)),
    "truncated_length": (NO, b"\x02\x00\x00"),
    "unterminated_object": (NO, _file(None, raw=b"{")),
}


def _library_verdict(path) -> str:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as fh:
            list(fh.keys())
    except Exception:  # noqa: BLE001 - SafetensorError and friends: a refusal
        return NO
    return OK


def _keishiki_verdict(path) -> str:
    """The reader's verdict, and inspect's (which may also not recognise the file at all)."""
    with Source(path) as src:
        try:
            st.read_tensors(src)
            reader = OK
        except CorruptFile:
            reader = NO
    try:
        inspect(path)
        whole = OK
    except KeishikiError:
        whole = NO
    assert reader == whole, "inspect and the reader disagree"
    return reader


@pytest.mark.parametrize("name", CASES)
def test_keishiki_and_safetensors_agree(name, tmp_path):
    expected, blob = CASES[name]
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(blob)
    assert _library_verdict(path) == expected, "the table's expectation is out of date"
    assert _keishiki_verdict(path) == expected


@pytest.mark.parametrize("command", ["info", "tensors", "scan"])
@pytest.mark.parametrize(
    "name",
    [
        "gap_between_tensors",
        "metadata_int_value",
        "unknown_dtype",
        "header_is_list",
        "trailing_garbage",
        "data_offsets_beyond_file",
        "metadata_twice",
    ],
)
def test_every_command_refuses(name, command, tmp_path):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(CASES[name][1])
    code, _out, err = run_cli(command, path)
    assert code == 2 and "Traceback" not in err, (code, err)


@pytest.mark.parametrize("command", ["compare", "map"])
def test_two_file_commands_refuse(command, tmp_path):
    bad, good = tmp_path / "bad.safetensors", tmp_path / "good.safetensors"
    bad.write_bytes(CASES["overlapping_tensors"][1])
    good.write_bytes(CASES["plain"][1])
    code, _out, err = run_cli(command, bad, good)
    assert code == 2 and "overlap" in err and "Traceback" not in err, (code, err)


def test_convert_refuses_a_malformed_file(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(CASES["overlapping_tensors"][1])
    code, _out, err = run_cli("convert", src, tmp_path / "out.gguf")
    assert code != 0 and not (tmp_path / "out.gguf").exists()
    assert "Traceback" not in err


def test_accepted_files_read_the_same_tensors(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "ok.safetensors"
    path.write_bytes(CASES["offsets_out_of_order_in_json"][1])
    info = inspect(path)
    with safe_open(path, framework="np") as fh:
        expected = {k: fh.get_tensor(k).tobytes() for k in fh.keys()}
    got = {t.name: info.tensor_loader(t).tobytes() for t in info.tensors}
    assert got == expected == {"a": b"abcd", "b": b"efgh"}
