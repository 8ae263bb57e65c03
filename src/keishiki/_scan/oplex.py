"""The bounded file object the recording unpickler reads from, and the opcode lexer that
guards it.

CPython's unpickler trusts its input: a ``LONG_BINPUT`` index of 2**31 grows its memo
array to 16 GiB (zero-filled, so resident), a stream of a billion one-byte opcodes runs
for minutes.  So the unpickler never gets a byte the :class:`Lexer` has not walked (opcode
lengths only, no stack) and cleared against the limits: memo index, opcode count, inline
payload bytes, time.  :func:`cleared_stream` lexes through the STOP and serves the cleared
bytes (a BytesIO: C-speed reads); :class:`GuardedReader` lexes as it serves, for joblib,
whose array data sit between opcodes, and raises :class:`Capped` at a limit.  A read beyond
the end of the data is a short read (the unpickler then raises as it would on a truncated
file), never an allocation.

The lexer also lists, in stream order, the opcodes that make the unpickler call
``find_class`` (GLOBAL, STACK_GLOBAL, INST, EXT1/2/4) with their offsets, and the PROTO
opcodes (``find_class`` maps Python 2 names only while the protocol is below 3).

Frames: the C unpickler reads a FRAME's bytes in one call, and when an opcode runs past
the end of its frame it drops the frame's rest and reads the opcode from the following
bytes; ``pickle._Unpickler`` raises instead.  The lexer stops (``Capped``) at an opcode that
straddles a frame end or at a frame opened inside another: the two loaders disagree there,
and a scan that follows one of them would not be a scan of the other.
"""

from __future__ import annotations

import io
import pickletools
import struct
import time
from array import array
from typing import Callable

MAX_OPS = 3_000_000  # ~320k opcodes in the data.pkl of a 10k-tensor checkpoint;
# at most ~216 bytes of objects each (EMPTY_SET)
MAX_MEMO_INDEX = 1 << 22  # the C memo array grows to twice the index: 64 MiB at most
MAX_INLINE = 384 << 20  # bytes/str payloads the unpickler materialises (a torch.save
# pickle holds none: tensor data lives outside it)
COPY_LIMIT = 64 << 20  # a cleared stream up to this size is served from one copy
NAMING = frozenset(("GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"))
# opcodes that take from an empty stack or need a MARK: a stream opening with one breaks at
# its first byte in every unpickler, naming nothing (a memo write there too, whatever the
# scan's limits say of its index)
BREAKS_AT_START = frozenset(b"012abdelorstuR.")


class Capped(Exception):
    """A limit of the scan (not of the loader) was reached: what follows was not seen."""


def opcode_name(op: int) -> str:
    """The pickletools name of opcode byte ``op``."""
    return _OPS[op][0] if op in _OPS else f"0x{op:02x}"


def _arg_kinds() -> dict[int, tuple[str, int]]:
    """opcode byte -> (name, argument kind): n > 0 fixed bytes, 0 none, -1 one line,
    -2 two lines, -11/-14/-18 a 1/4/8-byte little-endian length then that many bytes."""
    table: dict[int, tuple[str, int]] = {}
    for op in pickletools.opcodes:
        n = op.arg.n if op.arg is not None else 0
        if op.name in ("GLOBAL", "INST"):
            kind = -2
        elif n == pickletools.UP_TO_NEWLINE:
            kind = -1
        elif n == pickletools.TAKEN_FROM_ARGUMENT1:
            kind = -11
        elif n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
            kind = -14
        elif n == pickletools.TAKEN_FROM_ARGUMENT8U:
            kind = -18
        else:
            kind = n
        table[ord(op.code)] = (op.name, kind)
    return table


_OPS = _arg_kinds()
OPCODE_BYTES = frozenset(_OPS)
_KINDS = [(_OPS[b][1] if b in _OPS else None) for b in range(256)]
_SIGNED = frozenset(b for b, (name, _) in _OPS.items() if name in ("BINSTRING", "LONG4"))
# opcodes that need more than their length: names, memo writes, protocol, frames
_SPECIAL = frozenset(
    b for b, (name, _) in _OPS.items() if name in NAMING or name in ("PROTO", "FRAME", "PUT")
)
_LINE_WINDOW = 1 << 16
_PY2_TEXT = frozenset((0x53, 0x54, 0x55))  # STRING, BINSTRING, SHORT_BINSTRING
# the fast lane of :meth:`Lexer.advance`: opcodes whose only effect on the lexer is their
# length and one count (no name, memo write, protocol, frame, STOP, EMPTY_SET weight, py2
# text, inline accounting).  n > 0: that many bytes in all; -1: a 1-byte length follows;
# -4: an unsigned 4-byte length follows (short payloads only; long ones take the full path);
# -5: LONG_BINPUT (small indices only)
_FAST = [0] * 256
for _op, (_name, _kind) in _OPS.items():
    if _op == 0x72:
        _FAST[_op] = -5
    if _op in _SPECIAL or _op in _PY2_TEXT or _op in (0x72, 0x2E, 0x8F):
        continue
    if _kind >= 0:
        _FAST[_op] = 1 + _kind
    elif _kind == -11:
        _FAST[_op] = -1
    elif _kind == -14 and _op not in _SIGNED:
        _FAST[_op] = -4
_U32 = struct.Struct("<I").unpack_from
# BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8: read into a buffer of the claimed size
_ALLOCATES_FIRST = frozenset((0x42, 0x43, 0x8E, 0x96))


class Lexer:
    """Walks opcodes on demand (``advance(end)``), checking limits; see the module doc."""

    def __init__(self, data: memoryview, start: int, deadline: float, max_ops: int = MAX_OPS):
        self.data, self.n = _flat(data), len(data)
        self.pos = start  # next opcode to lex
        self.ok = start  # bytes before this are cleared to serve
        self.deadline, self.max_ops = deadline, max_ops
        self.n_ops = 0
        self.capped = ""  # why serving stopped at ``ok`` (our limit)
        self.dead = False  # unreadable from here: serve bytes, the loader will fail
        # where a bytes opcode claims more bytes than are left: served up to its start
        # only, as CPython's unpickler allocates the claimed size before it reads (and
        # BYTEARRAY8 of 2**40 prints a SystemError of its own on the way to MemoryError)
        self.truncated_at = -1
        # naming opcodes in stream order, compactly: offsets, and opcode bytes
        self.naming_at = array("q")
        self.naming_op = bytearray()
        self.ext: list[tuple[int, int]] = []  # (offset, code) of EXT opcodes
        self.protos: list[tuple[int, int]] = []  # (offset, protocol)
        self.py2_text = False  # STRING/BINSTRING/SHORT_BINSTRING seen (a Python 2 writer)
        self.frame_end = -1
        self.inline = 0  # payload bytes of counted opcodes so far
        self._win, self._win_base = b"", start  # cached bytes for newline searches

    def proto_at(self, pos: int) -> int:
        """The protocol the unpickler has seen by ``pos`` (0 before any PROTO)."""
        proto = 0
        for at, value in self.protos:
            if at < pos:
                proto = value
        return proto

    def advance(self, end: int, to_stop: bool = False) -> None:
        """Lex until every byte before ``end`` is cleared (with ``to_stop``: through the
        first STOP), a limit stops it, or the bytes stop making sense (the loader's own
        parser then fails on the same opcode: everything from it is served as is)."""
        data, n, kinds, special, fast, u32 = self.data, self.n, _KINDS, _SPECIAL, _FAST, _U32
        pos, count, frame_end = self.pos, self.n_ops, self.frame_end
        if self.capped:
            return
        # the fast lane takes an opcode only when it ends before this (the data's end, an
        # open frame's end): everything else goes through the full checks below
        limit = n if frame_end < 0 else min(n, frame_end)
        while pos < end:
            if count & 0xFFF < 4:
                if time.monotonic() > self.deadline:
                    self.capped = f"time limit reached at byte {pos}"
                    break
                if count >= self.max_ops:
                    self.capped = f"more than {self.max_ops} opcodes (stopped at byte {pos})"
                    break
            if pos >= n:
                self.dead = True
                break
            op = data[pos]
            k = fast[op]
            if k:
                if k > 0:
                    nxt = pos + k
                elif pos + 5 > limit:
                    nxt = limit
                elif k == -1:
                    nxt = pos + 2 + data[pos + 1]
                elif k == -5:  # LONG_BINPUT: a memo index below 2^22 needs no check
                    nxt = limit if data[pos + 4] or data[pos + 3] >= 0x40 else pos + 5
                else:
                    size = u32(data, pos + 1)[0]
                    nxt = pos + 5 + size if size <= 4096 else limit
                if nxt < limit:
                    count += 1
                    pos = nxt
                    # the rest of a run of fast-lane opcodes, without the checks above: pos
                    # stays below the limit (so below n), and the caps are looked at again
                    # before the opcode that makes count & 0xFFF < 4.  Anything else leaves
                    # the run and is taken from the top, as if the run had not been.
                    while pos < end and count & 0xFFF >= 4:
                        k = fast[data[pos]]
                        if k > 0:
                            nxt = pos + k
                        elif not k or pos + 5 > limit:
                            break
                        elif k == -1:
                            nxt = pos + 2 + data[pos + 1]
                        elif k == -5:
                            if data[pos + 4] or data[pos + 3] >= 0x40:
                                break
                            nxt = pos + 5
                        else:
                            size = u32(data, pos + 1)[0]
                            if size > 4096:
                                break
                            nxt = pos + 5 + size
                        if nxt >= limit:
                            break
                        count += 1
                        pos = nxt
                    continue
            kind = kinds[op]
            if kind is None:
                self.dead = True  # the unpickler raises "invalid load key" on this byte
                break
            nxt = pos + 1
            if kind > 0:
                nxt += kind
            elif kind == -11:  # 1-byte length: the common short strings
                if nxt >= n:
                    self.dead = True
                    break
                nxt += 1 + data[nxt]
            elif kind < -10:
                width = -kind - 10
                if nxt + width > n:
                    self.dead = True
                    break
                size = int.from_bytes(data[nxt : nxt + width], "little", signed=op in _SIGNED)
                nxt += width + max(size, 0)
                if nxt > n and op in _ALLOCATES_FIRST:
                    self.dead, self.truncated_at = True, pos
                    break
                if size > 4096:
                    self.inline += size
                    if self.inline > MAX_INLINE and nxt <= n:
                        self.capped = (
                            f"more than {MAX_INLINE >> 20} MiB of bytes/text inside "
                            f"the stream (at byte {pos})"
                        )
                        break
            elif kind == -1 or kind == -2:
                nxt = self._line_end(nxt, -kind)
            if nxt > n or nxt < 0:
                self.dead = True  # truncated: the unpickler gets a short read here
                break
            if op in _PY2_TEXT:
                self.py2_text = True
            # LONG_BINPUT (every memo write past 255) is checked inline: index >= 2^22 only
            if (
                op in special
                or frame_end >= 0
                or (op == 0x72 and (data[pos + 4] or data[pos + 3] >= 0x40))
            ):
                if not self._check(op, pos, nxt):
                    break
                frame_end = self.frame_end
                limit = n if frame_end < 0 else min(n, frame_end)
            count += 4 if op == 0x8F else 1  # an empty set costs 216 bytes: four opcodes' worth
            pos = nxt
            if to_stop and op == 0x2E:  # STOP
                break
        self.pos = pos
        self.ok = n if self.dead else pos
        if self.truncated_at >= 0:
            self.ok = self.truncated_at
        self.n_ops = count

    def resync(self, pos: int) -> None:
        """The loader consumed raw bytes (joblib array data) up to ``pos``: lex from there."""
        self.pos = self.ok = max(pos, self.ok)

    def _check(self, op: int, at: int, end: int) -> bool:
        """Limits and bookkeeping for one opcode at ``at``..``end``; False when it stops."""
        data, name = self.data, _OPS[op][0]
        if self.frame_end >= 0:
            if end > self.frame_end or (name == "FRAME" and at < self.frame_end):
                self.capped = (
                    f"opcode at byte {at} crosses or nests a FRAME (C and Python "
                    "unpicklers read it differently)"
                )
                return False
            if end == self.frame_end:
                self.frame_end = -1
        if name == "FRAME":
            size = int.from_bytes(data[at + 1 : at + 9], "little")
            if size and end + size <= self.n:
                self.frame_end = end + size
        elif name in NAMING:
            code = (
                int.from_bytes(data[at + 1 : end], "little", signed=name == "EXT4")
                if name.startswith("EXT")
                else None
            )
            self.naming_at.append(at)
            self.naming_op.append(op)
            if code is not None:
                self.ext.append((at, code))
        elif name == "PROTO":
            self.protos.append((at, data[at + 1]))
        elif name in ("LONG_BINPUT", "PUT"):
            raw = bytes(data[at + 1 : end])
            try:
                index = int.from_bytes(raw, "little") if name == "LONG_BINPUT" else int(raw.strip())
            except ValueError:
                index = 0  # the unpickler rejects it itself
            if index > MAX_MEMO_INDEX:
                self.capped = (
                    f"memo index {index} at byte {at} is beyond the scan's limit "
                    f"({MAX_MEMO_INDEX}): the unpickler would allocate for it"
                )
                return False
        return True

    def _line_end(self, start: int, lines: int) -> int:
        """Offset after the ``lines``-th newline from ``start``; -1 if there is none.
        Searches a cached copy of the bytes around ``start`` (lines are short and many)."""
        pos = start
        for _ in range(lines):
            while True:
                win, base = self._win, self._win_base
                if not base <= pos < base + len(win):
                    size = _LINE_WINDOW if len(win) <= _LINE_WINDOW else len(win)
                    win, base = self._refill(pos, size)
                i = win.find(b"\n", pos - base)
                if i >= 0:
                    pos = base + i + 1
                    break
                if base + len(win) >= self.n:
                    return -1
                self._refill(pos, len(win) * 4)  # a long line: widen the window
        return pos

    def _refill(self, pos: int, size: int) -> tuple[bytes, int]:
        self._win, self._win_base = bytes(self.data[pos : pos + size]), pos
        return self._win, pos


def _flat(data):
    """The bytes object behind a whole-object view (indexing ``bytes`` is about twice as
    fast as indexing a memoryview), else ``data`` itself (a mapped file is not copied)."""
    if (
        isinstance(data, memoryview)
        and type(data.obj) is bytes
        and data.nbytes == len(data.obj)
        and data.format == "B"
    ):
        return data.obj
    return data


def cleared_stream(data: memoryview, start: int, deadline: float):
    """Lex the stream at ``start`` through its STOP and return ``(lexer, file object)``: the
    file object serves the bytes the unpickler may read, up to a limit, or a little past an
    opcode the lexer could not read (the unpickler then fails on that same opcode, as the
    loader does).  A BytesIO copy when small (its reads cost nothing), else a view."""
    lexer = Lexer(data, start, deadline)
    lexer.advance(len(data), to_stop=True)
    end = min(len(data), lexer.pos + 4096) if lexer.dead else lexer.ok
    if lexer.truncated_at >= 0:
        end = lexer.truncated_at
    if end - start <= COPY_LIMIT:
        return lexer, io.BytesIO(bytes(data[start:end]))
    return lexer, GuardedReader(data, start, deadline, lexer)


class GuardedReader:
    """The file object the unpickler reads: serves bytes the lexer cleared, nothing more.

    It has ``read``, ``readinto`` and ``readline`` but no ``peek``: without ``peek`` the C
    unpickler reads exactly what each opcode needs, so ``pos`` is always where the loader's
    file position would be (the next stream starts there; joblib's array data is read
    from there).
    """

    def __init__(self, data: memoryview, start: int, deadline: float, lexer: Lexer | None = None):
        self.data, self.pos = data, start
        self.lexer = lexer or Lexer(data, start, deadline)
        self.on_read: Callable[[], None] | None = None

    def _clear(self, end: int) -> int:
        lexer = self.lexer
        if end > lexer.ok:
            lexer.advance(end)
            if end > lexer.ok and lexer.capped:
                raise Capped(lexer.capped)
        if lexer.truncated_at >= 0:  # a short read from there (see Lexer.truncated_at)
            return max(self.pos, min(end, lexer.truncated_at))
        return min(end, len(self.data))

    def read(self, n: int = -1) -> bytes:
        end = self._clear(len(self.data) if n is None or n < 0 else self.pos + n)
        out = bytes(self.data[self.pos : end])
        self.pos = max(self.pos, end)
        return out

    def readinto(self, buf) -> int:
        end = self._clear(self.pos + len(buf))
        n = end - self.pos
        memoryview(buf).cast("B")[:n] = self.data[self.pos : end]
        self.pos = end
        return n

    def readline(self, size: int = -1) -> bytes:
        stop = self.lexer._line_end(self.pos, 1)
        end = self._clear(stop if stop >= 0 else len(self.data))
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def read_raw(self, n: int) -> bytes | None:
        """Bytes a loader reads as data, not opcodes (joblib's array data); None when the
        data ends first.  The lexer resumes after them."""
        if n < 0 or self.pos + n > len(self.data):
            return None
        out = bytes(self.data[self.pos : self.pos + n]) if n <= 64 else b""
        self.pos += n
        self.lexer.resync(self.pos)
        return out
