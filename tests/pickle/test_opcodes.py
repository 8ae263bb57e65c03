"""The VM's opcode table: named constants equal to pickletools' codes, and every opcode of
protocols 0-5 handled (inline in the hot loop or by one registered handler)."""

from __future__ import annotations

import inspect
import pickletools
import re

import pytest

from keishiki.core import pickle_reader as pr
from keishiki.core.pickle_reader import read_pickle
from keishiki.errors import CorruptFile


@pytest.mark.parametrize("op", pickletools.opcodes, ids=lambda op: op.name)
def test_named_constant_matches_pickletools(op):
    assert getattr(pr, op.name) == ord(op.code)
    assert pr.OPCODE_NAMES[op.code.encode("latin-1")] == op.name


def test_every_opcode_is_handled_once():
    # the hot loop binds the opcodes it takes inline to locals; the rest have a handler each
    loop = inspect.getsource(pr._VM._loop)
    bindings = re.findall(r"^\s+o_\w+(?:, o_\w+)* = (.*)$", loop, re.MULTILINE)
    named = {name.strip() for line in bindings for name in line.split(",")}
    inline = {code for code, name in pr._NAME_OF.items() if name in named}
    assert len(pr._NAME_OF) == 68
    assert set(pr._HANDLERS) | inline == set(pr._NAME_OF)
    assert not set(pr._HANDLERS) & inline


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02q", "needs 1 bytes but only 0 are left"),  # BINPUT
        (b"\x80\x02r\x00\x00", "needs 4 bytes but only 2 are left"),  # LONG_BINPUT
        (b"\x80\x02M\x01", "needs 2 bytes but only 1 are left"),  # BININT2
        (b"\x80\x02J\x01", "needs 4 bytes but only 1 are left"),  # BININT
        (b"\x80\x02X\x05\x00\x00\x00ab", "needs 5 bytes but only 2 are left"),  # BINUNICODE
        (b"\x80\x02\x8c", "needs 1 bytes but only 0 are left"),  # SHORT_BINUNICODE
        (b"\x80\x02T\xff\xff\xff\xff", "BINSTRING with a negative length"),
        (b"\x80\x02\x8b\xfe\xff\xff\xff", "LONG4 with a negative byte count"),
        (b"\x80\x02U\x90", "needs 144 bytes but only 0 are left"),  # SHORT_BINSTRING: unsigned
        (b"\x80\x02\x8a\x90", "needs 144 bytes but only 0 are left"),  # LONG1: unsigned
        (b"\x80\x02\x99", "unknown opcode 0x99"),
    ],
)
def test_short_and_bad_arguments(data, message):
    with pytest.raises(CorruptFile, match=message):
        read_pickle(data)
    rec = read_pickle(data, lenient=True)
    assert rec.error == message and rec.error_offset == 2
