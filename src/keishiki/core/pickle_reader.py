"""A restricted pickle virtual machine: it reads every opcode of protocols 0-5 and calls nothing.

``pickle.load`` runs whatever callables a stream names (``os.system`` included).  This VM
keeps the same stack, memo and mark stack, but every global becomes a :class:`GlobalRef`
placeholder, every REDUCE/NEWOBJ/INST/OBJ a :class:`Call` record, and every persistent id
a :class:`PersistentId`.  The result is a tree of plain containers and placeholders that
format readers interpret (torch's tensor rebuild calls) and the scanner judges (every
global, with its offset).

Bounds: lengths are checked against the bytes left before anything is allocated, the
number of opcodes, the stack and mark depth and the memo size are capped, and the loop is
iterative, so a hostile stream fails with :class:`~keishiki.errors.CorruptFile` quickly and
in bounded memory instead of an ``IndexError``, ``MemoryError`` or ``RecursionError``.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptFile

# Python 2 module/name renames that pickle.Unpickler applies (fix_imports) for protocol < 3:
# a py2 stream's ``__builtin__.eval`` is ``builtins.eval`` when loaded, so record that.
try:  # _compat_pickle is CPython's own table; fall back to the few names that matter
    from _compat_pickle import IMPORT_MAPPING as _PY2_MODULES
    from _compat_pickle import NAME_MAPPING as _PY2_NAMES
except ImportError:  # pragma: no cover
    _PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
    _PY2_NAMES = {}

DYNAMIC = "<dynamic>"  # module/name of a STACK_GLOBAL whose operands were not strings
EXTENSION_MODULE = "copyreg.extension"  # EXT1/2/4 name a global through copyreg's registry


@dataclass(frozen=True)
class GlobalRef:
    """A reference to ``module.name`` found in the stream; never imported.

    Attributes:
        module, name: as the loader would resolve them (py2 names mapped like pickle does);
            ``"<dynamic>"`` when STACK_GLOBAL's operands were not strings.
        offset: byte offset of the opcode in the data given to the reader.
        opcode: GLOBAL, STACK_GLOBAL, INST or EXT1/EXT2/EXT4.
        note: how the name was obtained when not literal (py2 rename, extension code...).
    """

    module: str
    name: str
    offset: int
    opcode: str
    note: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"GlobalRef({self.qualname}@{self.offset})"


@dataclass(eq=False)
class Call:
    """The result of REDUCE / NEWOBJ / NEWOBJ_EX / INST / OBJ: ``func(*args, **kwargs)`` not run.

    BUILD stores its argument in ``state``; SETITEM(S) on the result fill ``dictitems``
    (an OrderedDict's entries), APPEND(S)/ADDITEMS fill ``listitems``.
    """

    func: Any
    args: tuple
    kwargs: dict | None
    offset: int
    opcode: str
    state: Any = None
    dictitems: dict | None = None
    listitems: list | None = None

    @property
    def qualname(self) -> str:
        """``module.name`` of the callable when it is a global, else ``"<dynamic>"``."""
        return self.func.qualname if isinstance(self.func, GlobalRef) else DYNAMIC

    def __repr__(self) -> str:
        return f"Call({self.qualname}@{self.offset} {self.opcode})"


@dataclass(frozen=True, eq=False)
class PersistentId:
    """A PERSID / BINPERSID reference (torch: ``('storage', type, key, location, numel)``)."""

    pid: Any
    offset: int


@dataclass(frozen=True, eq=False)
class PickleBuffer:
    """A NEXT_BUFFER out-of-band buffer (protocol 5); its bytes are not in the stream."""

    offset: int
    readonly: bool = False


@dataclass(frozen=True, eq=False)
class OpaqueKey:
    """A dict key that is not safely hashable (a placeholder, a list, a deep tuple)."""

    value: Any
    offset: int

    def __repr__(self) -> str:
        return f"<{type(self.value).__name__} key@{self.offset}>"


@dataclass(frozen=True, eq=False)
class InlineArray:
    """Raw array bytes that joblib writes into the stream right after a NumpyArrayWrapper's
    BUILD (read only with ``joblib_arrays=True``); object arrays are a nested pickle instead."""

    wrapper: Call
    offset: int  # first byte of the array data (after joblib's alignment padding)
    nbytes: int
    dtype: str  # numpy dtype string with byte order, e.g. "<f8"
    shape: tuple[int, ...]
    order: str  # "C" or "F"
    nested: "PickleRecord | None" = None  # object arrays: the nested pickle stream


JOBLIB_WRAPPERS = {
    "joblib.numpy_pickle.NumpyArrayWrapper",
    "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
}


@dataclass
class PickleRecord:
    """Everything one pickle stream did, for format readers and the scanner."""

    value: Any
    protocol: int
    globals: list[GlobalRef]
    calls: list[Call]
    start: int
    end: int
    error: str | None = None
    error_offset: int | None = None
    persistent_ids: list[PersistentId] = field(default_factory=list)
    n_ops: int = 0
    py2_strings: bool = False  # STRING/BINSTRING/SHORT_BINSTRING seen (a Python 2 writer)
    notes: list[str] = field(default_factory=list)  # oddities a real loader would trip on
    inline_arrays: list[InlineArray] = field(default_factory=list)  # joblib_arrays mode only


class _Fail(Exception):
    """Internal: a malformed stream (reason, offset); becomes CorruptFile or a lenient record."""

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


_MARK = object()  # pushed by MARK; never escapes the VM
_ATOMIC = (str, bytes, int, float, bool, type(None), GlobalRef)

# opcode byte -> name, for every opcode of protocols 0-5 (used by read_pickles' garbage test
# and for error messages)
OPCODE_NAMES = {
    b"(": "MARK",
    b".": "STOP",
    b"0": "POP",
    b"1": "POP_MARK",
    b"2": "DUP",
    b"F": "FLOAT",
    b"I": "INT",
    b"J": "BININT",
    b"K": "BININT1",
    b"L": "LONG",
    b"M": "BININT2",
    b"N": "NONE",
    b"P": "PERSID",
    b"Q": "BINPERSID",
    b"R": "REDUCE",
    b"S": "STRING",
    b"T": "BINSTRING",
    b"U": "SHORT_BINSTRING",
    b"V": "UNICODE",
    b"X": "BINUNICODE",
    b"a": "APPEND",
    b"b": "BUILD",
    b"c": "GLOBAL",
    b"d": "DICT",
    b"}": "EMPTY_DICT",
    b"e": "APPENDS",
    b"g": "GET",
    b"h": "BINGET",
    b"i": "INST",
    b"j": "LONG_BINGET",
    b"l": "LIST",
    b"]": "EMPTY_LIST",
    b"o": "OBJ",
    b"p": "PUT",
    b"q": "BINPUT",
    b"r": "LONG_BINPUT",
    b"s": "SETITEM",
    b"t": "TUPLE",
    b")": "EMPTY_TUPLE",
    b"u": "SETITEMS",
    b"G": "BINFLOAT",
    b"\x80": "PROTO",
    b"\x81": "NEWOBJ",
    b"\x82": "EXT1",
    b"\x83": "EXT2",
    b"\x84": "EXT4",
    b"\x85": "TUPLE1",
    b"\x86": "TUPLE2",
    b"\x87": "TUPLE3",
    b"\x88": "NEWTRUE",
    b"\x89": "NEWFALSE",
    b"\x8a": "LONG1",
    b"\x8b": "LONG4",
    b"B": "BINBYTES",
    b"C": "SHORT_BINBYTES",
    b"\x8c": "SHORT_BINUNICODE",
    b"\x8d": "BINUNICODE8",
    b"\x8e": "BINBYTES8",
    b"\x8f": "EMPTY_SET",
    b"\x90": "ADDITEMS",
    b"\x91": "FROZENSET",
    b"\x92": "NEWOBJ_EX",
    b"\x93": "STACK_GLOBAL",
    b"\x94": "MEMOIZE",
    b"\x95": "FRAME",
    b"\x96": "BYTEARRAY8",
    b"\x97": "NEXT_BUFFER",
    b"\x98": "READONLY_BUFFER",
}
_NAME_OF = {op[0]: name for op, name in OPCODE_NAMES.items()}
_U32 = struct.Struct("<I")  # LONG_BINPUT / LONG_BINGET / BINUNICODE arguments
_I32 = struct.Struct("<i")  # BININT
_OPCODE_BYTES = frozenset(_NAME_OF)


def safe_key(value: Any, offset: int = -1) -> Any:
    """``value`` when it can be hashed cheaply and safely, else an :class:`OpaqueKey`.

    Only atomic values and shallow tuples of them are used as real keys: hashing a
    10,000-deep tuple or a placeholder must not recurse or raise.
    """
    if isinstance(value, _ATOMIC):
        return value
    if type(value) is tuple and len(value) <= 64 and all(isinstance(v, _ATOMIC) for v in value):
        return value
    return OpaqueKey(value, offset)


def _decode_py2(raw: bytes) -> str:
    """A Python 2 ``str`` as text: UTF-8 when it is, else latin-1 (lossless for any bytes)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _VM:
    """One pass over one stream.  Fields are plain attributes for speed in the hot loop."""

    def __init__(
        self,
        data: memoryview,
        start: int,
        max_ops: int,
        max_depth: int,
        max_memo: int,
        joblib_arrays: bool = False,
        path: str = "<pickle>",
    ):
        self.data = data
        self.n = len(data)
        self.pos = start
        self.max_ops = max_ops
        self.max_depth = max_depth
        self.max_memo = max_memo
        self.max_stack = max(max_depth * 100, 1_000_000)
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self._n_ops = 0
        self.joblib_arrays = joblib_arrays
        self.path = path
        self.rec = PickleRecord(
            value=None, protocol=0, globals=[], calls=[], start=start, end=start
        )

    # ---- byte access ----------------------------------------------------------------------
    def take(self, k: int, at: int) -> memoryview:
        """The next ``k`` bytes; checks the length against what is left before slicing."""
        pos = self.pos
        if k < 0 or k > self.n - pos:
            raise _Fail(f"needs {k} bytes but only {self.n - pos} are left", at)
        self.pos = pos + k
        return self.data[pos : pos + k]

    def line(self, at: int) -> bytes:
        """Bytes up to the next newline (protocol-0 arguments), at most 1 MiB."""
        pos = self.pos
        size = 64  # lines are short: look in a small window first, widen up to 1 MiB
        while True:
            window = bytes(self.data[pos : pos + size])
            end = window.find(b"\n")
            if end >= 0:
                self.pos = pos + end + 1
                return window[:end]
            if size >= (1 << 20) or pos + size >= self.n:
                raise _Fail("unterminated text argument (no newline)", at)
            size *= 8

    # ---- stack helpers --------------------------------------------------------------------
    def pop(self, at: int) -> Any:
        try:
            value = self.stack.pop()
        except IndexError:
            raise _Fail("stack underflow", at) from None
        if value is _MARK:
            raise _Fail("unexpected MARK on the stack", at)
        return value

    def top(self, at: int) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise _Fail("stack underflow", at)
        return self.stack[-1]

    def pop_mark(self, at: int) -> list[Any]:
        if not self.metastack:
            raise _Fail("no MARK to pop to", at)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def push(self, value: Any, at: int) -> None:
        self.stack.append(value)
        if len(self.stack) > self.max_stack:
            raise _Fail(f"stack deeper than {self.max_stack} items", at)

    def memo_put(self, idx: int, at: int) -> None:
        if idx not in self.memo and len(self.memo) >= self.max_memo:
            raise _Fail(f"memo larger than {self.max_memo} entries", at)
        self.memo[idx] = self.top(at)

    def memo_get(self, idx: int, at: int) -> None:
        try:
            self.push(self.memo[idx], at)
        except KeyError:
            raise _Fail(f"memo key {idx} was never stored", at) from None

    # ---- globals and calls ----------------------------------------------------------------
    def add_global(self, module: str, name: str, at: int, opcode: str, note: str = "") -> GlobalRef:
        if self.rec.protocol < 3 and opcode in ("GLOBAL", "INST"):
            mapped = _PY2_NAMES.get((module, name))
            if mapped:
                note = f"python 2 name {module}.{name}"
                module, name = mapped
            elif module in _PY2_MODULES:
                note = f"python 2 module {module}"
                module = _PY2_MODULES[module]
        ref = GlobalRef(module, name, at, opcode, note)
        self.rec.globals.append(ref)
        return ref

    def add_call(self, func: Any, args: Any, kwargs: Any, at: int, opcode: str) -> Call:
        if not isinstance(args, tuple):
            args = (args,)  # a real loader would fail; keep going so scan sees the rest
            self.rec.notes.append(f"{opcode} at {at}: arguments are not a tuple")
        call = Call(
            func,
            args,
            kwargs if isinstance(kwargs, dict) or kwargs is None else {"<kwargs>": kwargs},
            at,
            opcode,
        )
        self.rec.calls.append(call)
        return call

    def setitems(self, target: Any, pairs: list[Any], at: int) -> None:
        if len(pairs) % 2:
            raise _Fail("SETITEMS with an odd number of items", at)
        if isinstance(target, dict):
            store = target
        elif isinstance(target, Call):
            if target.dictitems is None:
                target.dictitems = {}
            store = target.dictitems
        else:
            self.rec.notes.append(f"SETITEM(S) at {at} on a {type(target).__name__}")
            return
        for i in range(0, len(pairs), 2):
            store[safe_key(pairs[i], at)] = pairs[i + 1]

    def appends(self, target: Any, items: list[Any], at: int) -> None:
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Call):
            if target.listitems is None:
                target.listitems = []
            target.listitems.extend(items)
        elif isinstance(target, set):
            target.update(safe_key(v, at) for v in items)
        else:
            self.rec.notes.append(f"APPEND(S)/ADDITEMS at {at} on a {type(target).__name__}")

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except _Fail:
            self.rec.n_ops = max(self.rec.n_ops, self._n_ops)
            raise

    def _loop(self) -> None:  # noqa: C901 - one dispatch chain, kept in one place for speed
        """The hot loop: position, stack and counters live in locals (attribute access per
        opcode is what made the VM slow) and the opcodes of a torch ``data.pkl`` (protocol
        2) and of protocol 4/5 pickles are handled inline, most frequent first.  Everything
        else goes through :meth:`_slow` with the state synced to the attributes.

        Failure offsets and the partial state a lenient record sees (``self.pos``,
        ``self.stack``) are the same as one opcode at a time through the helpers would give.
        """
        data, rec, n, memo = self.data, self.rec, self.n, self.memo
        metastack = self.metastack
        stack = self.stack
        pos = self.pos
        n_ops = self._n_ops
        max_memo, max_depth, max_ops, max_stack = (
            self.max_memo,
            self.max_depth,
            self.max_ops,
            self.max_stack,
        )
        calls_append = rec.calls.append
        pids_append = rec.persistent_ids.append
        unpack_u32, unpack_i32 = _U32.unpack_from, _I32.unpack_from
        mark, call_cls, pid_cls, new = _MARK, Call, PersistentId, object.__new__
        in_slow = False
        try:
            while True:
                at = pos
                try:  # no bounds test per opcode: try is free in CPython 3.11
                    op = data[at]
                except IndexError:
                    raise _Fail("stream ends before STOP (truncated)", at) from None
                n_ops += 1
                if not n_ops & 0x3FF:  # caps checked every 1024 opcodes: cheap, still bounded
                    rec.n_ops = n_ops
                    if n_ops > max_ops:
                        raise _Fail(f"more than {max_ops} opcodes", at)
                    if len(stack) > max_stack:
                        raise _Fail(f"stack deeper than {max_stack} items", at)
                if op == 0x72 or op == 0x71:  # LONG_BINPUT / BINPUT
                    if op == 0x71:
                        if at + 1 >= n:
                            raise _Fail(f"needs 1 bytes but only {n - at - 1} are left", at)
                        arg = data[at + 1]
                        pos = at + 2
                    else:
                        if at + 4 >= n:
                            raise _Fail(f"needs 4 bytes but only {n - at - 1} are left", at)
                        arg = unpack_u32(data, at + 1)[0]
                        pos = at + 5
                    if not stack or stack[-1] is mark:
                        raise _Fail("stack underflow", at)
                    if len(memo) >= max_memo and arg not in memo:
                        raise _Fail(f"memo larger than {max_memo} entries", at)
                    memo[arg] = stack[-1]
                elif op == 0x4B:  # BININT1
                    if at + 1 >= n:
                        raise _Fail(f"needs 1 bytes but only {n - at - 1} are left", at)
                    stack.append(data[at + 1])
                    pos = at + 2
                elif op == 0x68 or op == 0x6A:  # BINGET / LONG_BINGET
                    if op == 0x68:
                        if at + 1 >= n:
                            raise _Fail(f"needs 1 bytes but only {n - at - 1} are left", at)
                        arg = data[at + 1]
                        pos = at + 2
                    else:
                        if at + 4 >= n:
                            raise _Fail(f"needs 4 bytes but only {n - at - 1} are left", at)
                        arg = unpack_u32(data, at + 1)[0]
                        pos = at + 5
                    try:
                        stack.append(memo[arg])
                    except KeyError:
                        raise _Fail(f"memo key {arg} was never stored", at) from None
                elif op == 0x28:  # MARK
                    metastack.append(stack)
                    stack = []
                    pos = at + 1
                    if len(metastack) > max_depth:
                        raise _Fail(f"MARKs nested deeper than {max_depth}", at)
                elif op == 0x58:  # BINUNICODE
                    if at + 5 > n:
                        raise _Fail(f"needs 4 bytes but only {n - at - 1} are left", at)
                    k = unpack_u32(data, at + 1)[0]
                    end = at + 5 + k
                    if end > n:
                        raise _Fail(f"needs {k} bytes but only {n - at - 5} are left", at)
                    try:
                        stack.append(str(data[at + 5 : end], "utf-8", "surrogatepass"))
                    except UnicodeDecodeError:
                        raise _Fail("string is not valid UTF-8", at) from None
                    pos = end
                elif op == 0x74:  # TUPLE
                    if not metastack:
                        raise _Fail("no MARK to pop to", at)
                    items = stack
                    stack = metastack.pop()
                    stack.append(tuple(items))
                    pos = at + 1
                elif op == 0x86:  # TUPLE2
                    if len(stack) < 2:
                        raise _Fail("stack underflow", at)
                    a, b = stack[-2], stack[-1]
                    if a is mark or b is mark:
                        raise _Fail("unexpected MARK on the stack", at)
                    del stack[-1]
                    stack[-1] = (a, b)
                    pos = at + 1
                elif op == 0x52:  # REDUCE
                    if len(stack) < 2:
                        raise _Fail("stack underflow", at)
                    func, args = stack[-2], stack[-1]
                    if func is mark or args is mark:
                        raise _Fail("unexpected MARK on the stack", at)
                    del stack[-1]
                    if type(args) is tuple:
                        call = call_cls(func, args, None, at, "REDUCE")
                        calls_append(call)
                    else:
                        call = self.add_call(func, args, None, at, "REDUCE")
                    stack[-1] = call
                    pos = at + 1
                elif op == 0x51:  # BINPERSID
                    if not stack:
                        raise _Fail("stack underflow", at)
                    value = stack[-1]
                    if value is mark:
                        raise _Fail("unexpected MARK on the stack", at)
                    pid = new(pid_cls)  # PersistentId(value, at) minus frozen-init overhead
                    pid.__dict__.update(pid=value, offset=at)
                    pids_append(pid)
                    stack[-1] = pid
                    pos = at + 1
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                    pos = at + 1
                elif op == 0x29:  # EMPTY_TUPLE
                    stack.append(())
                    pos = at + 1
                elif op == 0x4D:  # BININT2
                    if at + 2 >= n:
                        raise _Fail(f"needs 2 bytes but only {n - at - 1} are left", at)
                    stack.append(data[at + 1] | (data[at + 2] << 8))
                    pos = at + 3
                elif op == 0x4A:  # BININT
                    pos = at + 1
                    if at + 5 > n:
                        raise _Fail(f"needs 4 bytes but only {n - at - 1} are left", at)
                    stack.append(unpack_i32(data, at + 1)[0])
                    pos = at + 5
                elif op == 0x94:  # MEMOIZE
                    pos = at + 1
                    idx = len(memo)
                    if idx >= max_memo and idx not in memo:
                        raise _Fail(f"memo larger than {max_memo} entries", at)
                    if not stack or stack[-1] is mark:
                        raise _Fail("stack underflow", at)
                    memo[idx] = stack[-1]
                elif op == 0x8C:  # SHORT_BINUNICODE
                    pos = at + 1
                    if pos >= n:
                        raise _Fail(f"needs 1 bytes but only {n - pos} are left", at)
                    k = data[pos]
                    pos += 1
                    if k > n - pos:
                        raise _Fail(f"needs {k} bytes but only {n - pos} are left", at)
                    raw = data[pos : pos + k]
                    pos += k
                    try:
                        stack.append(str(raw, "utf-8", "surrogatepass"))
                    except UnicodeDecodeError:
                        raise _Fail("string is not valid UTF-8", at) from None
                elif op == 0x85 or op == 0x87:  # TUPLE1 / TUPLE3
                    count = 1 if op == 0x85 else 3
                    if len(stack) < count:
                        raise _Fail("stack underflow", at)
                    items = stack[-count:]
                    if mark in items:  # identity is checked first: placeholders never equal it
                        raise _Fail("unexpected MARK on the stack", at)
                    del stack[-count:]
                    stack.append(tuple(items))
                    pos = at + 1
                elif op == 0x4E or op == 0x88:  # NONE / NEWTRUE
                    stack.append(None if op == 0x4E else True)
                    pos = at + 1
                elif op == 0x95:  # FRAME: a length prefix for buffering; the opcodes follow
                    pos = at + 1
                    if 8 > n - pos:
                        raise _Fail(f"needs 8 bytes but only {n - pos} are left", at)
                    pos += 8
                elif op == 0x2E:  # STOP
                    pos = at + 1
                    self.pos = pos
                    self.stack = stack
                    self._n_ops = n_ops
                    rec.value = self.pop(at) if stack else None
                    rec.end = pos
                    rec.n_ops = n_ops
                    return
                else:  # everything else: the state goes back to the attributes for the helpers
                    self.stack = stack
                    self.pos = at + 1
                    self._n_ops = n_ops
                    in_slow = True
                    if self._slow(op, at):
                        rec.n_ops = n_ops
                        return
                    in_slow = False
                    stack = self.stack
                    pos = self.pos
                    rec.n_ops = n_ops
        except BaseException:
            self._n_ops = n_ops
            if not in_slow:
                self.stack = stack
                self.pos = pos
            raise

    def _slow(self, op: int, at: int) -> bool:  # noqa: C901 - the less frequent opcodes
        """One opcode outside the inline set, with ``self.pos`` just past the opcode byte.

        Returns:
            True when the opcode was STOP (the record is complete).
        """
        rec = self.rec
        if op == 0x4A:  # BININT
            self.push(struct.unpack("<i", self.take(4, at))[0], at)
        elif op == 0x75:  # SETITEMS
            pairs = self._marked(at)
            self.setitems(self.top(at), pairs, at)
        elif op == 0x73:  # SETITEM
            v = self.pop(at)
            k = self.pop(at)
            self.setitems(self.top(at), [k, v], at)
        elif op == 0x7D:  # EMPTY_DICT
            self.push({}, at)
        elif op == 0x5D:  # EMPTY_LIST
            self.push([], at)
        elif op == 0x65:  # APPENDS
            items = self._marked(at)
            self.appends(self.top(at), items, at)
        elif op == 0x61:  # APPEND
            v = self.pop(at)
            self.appends(self.top(at), [v], at)
        elif op == 0x62:  # BUILD
            state = self.pop(at)
            target = self.top(at)
            if isinstance(target, Call):
                # a second BUILD on one object updates it again; keep both states
                target.state = state if target.state is None else (target.state, state)
                if self.joblib_arrays and target.qualname in JOBLIB_WRAPPERS:
                    self.skip_joblib_array(target, at)
            else:
                self.rec.notes.append(f"BUILD at {at} on a {type(target).__name__}")
                self.stack[-1] = self.add_call(None, (target,), None, at, "BUILD")
                self.stack[-1].state = state
        elif op == 0x63:  # GLOBAL
            module = self._text(self.line(at), at)
            name = self._text(self.line(at), at)
            self.push(self.add_global(module, name, at, "GLOBAL"), at)
        elif op == 0x93:  # STACK_GLOBAL
            name = self.pop(at)
            module = self.pop(at)
            if isinstance(module, str) and isinstance(name, str):
                ref = self.add_global(module, name, at, "STACK_GLOBAL")
            else:
                ref = self.add_global(
                    DYNAMIC,
                    DYNAMIC,
                    at,
                    "STACK_GLOBAL",
                    note=f"operands were {type(module).__name__} and "
                    f"{type(name).__name__}, not strings",
                )
            self.push(ref, at)
        elif op == 0x81:  # NEWOBJ
            args = self.pop(at)
            cls = self.pop(at)
            self.push(self.add_call(cls, args, None, at, "NEWOBJ"), at)
        elif op == 0x92:  # NEWOBJ_EX
            kwargs = self.pop(at)
            args = self.pop(at)
            cls = self.pop(at)
            self.push(self.add_call(cls, args, kwargs, at, "NEWOBJ_EX"), at)
        elif op == 0x94:  # MEMOIZE
            self.memo_put(len(self.memo), at)
        elif op == 0x8C:  # SHORT_BINUNICODE
            k = self.take(1, at)[0]
            self.push(self._utf8(self.take(k, at), at), at)
        elif op == 0x95:  # FRAME: a length prefix for buffering; the opcodes follow inline
            self.take(8, at)
        elif op == 0x80:  # PROTO
            proto = self.take(1, at)[0]
            if proto > 5:
                raise _Fail(f"unsupported pickle protocol {proto}", at)
            rec.protocol = max(rec.protocol, proto)
        elif op == 0x2E:  # STOP
            rec.value = self.pop(at) if self.stack else None
            rec.end = self.pos
            return True
        else:
            self._rare(op, at)
        return False

    def _rare(self, op: int, at: int) -> None:  # noqa: C901 - the remaining opcodes
        rec = self.rec
        if op == 0x30:  # POP
            if self.stack:
                self.stack.pop()
            else:
                self.pop_mark(at)  # POP of an empty stack pops a MARK in CPython
        elif op == 0x31:  # POP_MARK
            self.pop_mark(at)
        elif op == 0x32:  # DUP
            self.push(self.top(at), at)
        elif op == 0x70:  # PUT
            self.memo_put(self._int_arg(self.line(at), at), at)
        elif op == 0x67:  # GET
            self.memo_get(self._int_arg(self.line(at), at), at)
        elif op == 0x49:  # INT (protocol 0; "01"/"00" are Python 2 booleans)
            text = self.line(at)
            if text in (b"01", b"00"):
                self.push(text == b"01", at)
            else:
                self.push(self._int_arg(text, at), at)
        elif op == 0x4C:  # LONG (protocol 0)
            text = self.line(at)
            self.push(self._int_arg(text[:-1] if text.endswith(b"L") else text, at), at)
        elif op == 0x8A:  # LONG1
            k = self.take(1, at)[0]
            self.push(int.from_bytes(self.take(k, at), "little", signed=True), at)
        elif op == 0x8B:  # LONG4
            (k,) = struct.unpack("<i", self.take(4, at))
            if k < 0:
                raise _Fail("LONG4 with a negative byte count", at)
            self.push(int.from_bytes(self.take(k, at), "little", signed=True), at)
        elif op == 0x46:  # FLOAT
            try:
                self.push(float(self.line(at)), at)
            except ValueError:
                raise _Fail("FLOAT argument is not a number", at) from None
        elif op == 0x47:  # BINFLOAT
            self.push(struct.unpack(">d", self.take(8, at))[0], at)
        elif op == 0x53:  # STRING (protocol 0, quoted, Python 2 str)
            text = self.line(at)
            if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
                raise _Fail("STRING argument is not quoted", at)
            try:
                raw = codecs.escape_decode(text[1:-1])[0]
            except Exception:  # escape_decode raises ValueError and friends on bad escapes
                raise _Fail("STRING argument has a bad escape", at) from None
            rec.py2_strings = True
            self.push(_decode_py2(raw), at)
        elif op == 0x54:  # BINSTRING
            (k,) = struct.unpack("<i", self.take(4, at))
            if k < 0:
                raise _Fail("BINSTRING with a negative length", at)
            rec.py2_strings = True
            self.push(_decode_py2(bytes(self.take(k, at))), at)
        elif op == 0x55:  # SHORT_BINSTRING
            k = self.take(1, at)[0]
            rec.py2_strings = True
            self.push(_decode_py2(bytes(self.take(k, at))), at)
        elif op == 0x56:  # UNICODE (protocol 0, raw-unicode-escape)
            try:
                self.push(self.line(at).decode("raw-unicode-escape"), at)
            except UnicodeDecodeError:
                raise _Fail("UNICODE argument is not valid raw-unicode-escape", at) from None
        elif op == 0x8D:  # BINUNICODE8
            (k,) = struct.unpack("<Q", self.take(8, at))
            self.push(self._utf8(self.take(k, at), at), at)
        elif op == 0x42:  # BINBYTES
            (k,) = struct.unpack("<I", self.take(4, at))
            self.push(bytes(self.take(k, at)), at)
        elif op == 0x43:  # SHORT_BINBYTES
            k = self.take(1, at)[0]
            self.push(bytes(self.take(k, at)), at)
        elif op == 0x8E:  # BINBYTES8
            (k,) = struct.unpack("<Q", self.take(8, at))
            self.push(bytes(self.take(k, at)), at)
        elif op == 0x96:  # BYTEARRAY8
            (k,) = struct.unpack("<Q", self.take(8, at))
            self.push(bytearray(self.take(k, at)), at)
        elif op == 0x97:  # NEXT_BUFFER
            self.push(PickleBuffer(at), at)
        elif op == 0x98:  # READONLY_BUFFER
            buf = self.top(at)
            if isinstance(buf, PickleBuffer):
                self.stack[-1] = PickleBuffer(buf.offset, readonly=True)
        elif op == 0x6C:  # LIST
            self.push(self._marked(at), at)
        elif op == 0x64:  # DICT
            items = self._marked(at)
            d: dict = {}
            self.setitems(d, items, at)
            self.push(d, at)
        elif op == 0x8F:  # EMPTY_SET
            self.push(set(), at)
        elif op == 0x90:  # ADDITEMS
            items = self._marked(at)
            self.appends(self.top(at), items, at)
        elif op == 0x91:  # FROZENSET
            self.push(frozenset(safe_key(v, at) for v in self._marked(at)), at)
        elif op == 0x50:  # PERSID (protocol 0: the id is a text line)
            pid = PersistentId(self._text(self.line(at), at), at)
            rec.persistent_ids.append(pid)
            self.push(pid, at)
        elif op == 0x69:  # INST: MARK args... INST module\nname\n -> module.name(*args)
            module = self._text(self.line(at), at)
            name = self._text(self.line(at), at)
            args = tuple(self._marked(at))
            ref = self.add_global(module, name, at, "INST")
            self.push(self.add_call(ref, args, None, at, "INST"), at)
        elif op == 0x6F:  # OBJ: MARK cls args... OBJ -> cls(*args)
            items = self._marked(at)
            if not items:
                raise _Fail("OBJ without a class", at)
            self.push(self.add_call(items[0], tuple(items[1:]), None, at, "OBJ"), at)
        elif op in (0x82, 0x83, 0x84):  # EXT1 / EXT2 / EXT4: a code in copyreg's registry
            width = {0x82: 1, 0x83: 2, 0x84: 4}[op]
            code = int.from_bytes(self.take(width, at), "little", signed=op == 0x84)
            ref = self.add_global(
                EXTENSION_MODULE,
                str(code),
                at,
                _NAME_OF[op],
                note="resolved through copyreg's extension registry",
            )
            self.push(ref, at)
        else:
            raise _Fail(f"unknown opcode 0x{op:02x}", at)

    # ---- joblib ---------------------------------------------------------------------------
    def skip_joblib_array(self, wrapper: Call, at: int) -> None:
        """Step over the array data joblib.dump writes after a NumpyArrayWrapper's BUILD
        (joblib.load reads it from the file there): optional alignment padding then raw
        bytes, or, for object arrays, a nested pickle stream (run through this VM too)."""
        state = wrapper.state if isinstance(wrapper.state, dict) else {}
        shape, dtype_call = state.get("shape"), state.get("dtype")
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise _Fail("joblib array wrapper without a valid shape", at)
        if (
            not isinstance(dtype_call, Call)
            or not dtype_call.args
            or not isinstance(dtype_call.args[0], str)
            or len(dtype_call.args[0]) > 32
        ):
            raise _Fail("joblib array wrapper without a valid dtype", at)
        code = dtype_call.args[0]
        dstate = dtype_call.state if isinstance(dtype_call.state, tuple) else ()
        flags = dstate[7] if len(dstate) > 7 and type(dstate[7]) is int else 0
        if code.startswith("O") or flags & 1:  # holds Python objects: a nested pickle
            try:
                nested = read_pickle(
                    self.data,
                    self.pos,
                    path=self.path,
                    joblib_arrays=True,
                    max_ops=self.max_ops,
                    max_depth=self.max_depth,
                    max_memo=self.max_memo,
                )
            except CorruptFile as exc:
                raise _Fail(
                    f"joblib object array: {exc.reason}",
                    exc.offset if exc.offset is not None else self.pos,
                ) from None
            self.rec.globals.extend(nested.globals)
            self.rec.calls.extend(nested.calls)
            self.rec.persistent_ids.extend(nested.persistent_ids)
            self.rec.inline_arrays.append(
                InlineArray(wrapper, self.pos, nested.end - self.pos, code, shape, "C", nested)
            )
            self.rec.inline_arrays.extend(nested.inline_arrays)
            self.pos = nested.end
            return
        try:
            import numpy as np  # numpy is a core dependency; parsing a dtype string runs nothing

            itemsize = (
                dstate[5]
                if len(dstate) > 5 and type(dstate[5]) is int and dstate[5] > 0
                else np.dtype(code).itemsize
            )
        except (TypeError, ValueError, SyntaxError):
            raise _Fail(f"joblib array dtype {code!r} is not a numpy dtype", at) from None
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = self.take(1, self.pos)[0]
            self.take(pad, self.pos)
        nbytes = itemsize
        for d in shape:
            nbytes *= d
        order = state.get("order") if state.get("order") in ("C", "F") else "C"
        byteorder = dstate[1] if len(dstate) > 1 and dstate[1] in ("<", ">", "|") else "|"
        start = self.pos
        self.take(nbytes, start)
        self.rec.inline_arrays.append(
            InlineArray(wrapper, start, nbytes, byteorder + code, shape, order)
        )

    # ---- argument helpers -----------------------------------------------------------------
    def _marked(self, at: int) -> list[Any]:
        items = self.pop_mark(at)
        return items

    @staticmethod
    def _utf8(raw: memoryview, at: int) -> str:
        try:
            return str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _Fail("string is not valid UTF-8", at) from None

    @staticmethod
    def _text(raw: bytes, at: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    @staticmethod
    def _int_arg(text: bytes, at: int) -> int:
        if len(text) > 4000:  # CPython refuses >4300 digits too; this also keeps it linear
            raise _Fail("integer literal too long", at)
        try:
            return int(text)
        except ValueError:
            raise _Fail(f"bad integer literal {text[:20]!r}", at) from None


def read_pickle(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    *,
    path: str = "<pickle>",
    lenient: bool = False,
    max_ops: int = 50_000_000,
    max_depth: int = 10_000,
    max_memo: int = 10_000_000,
    joblib_arrays: bool = False,
) -> PickleRecord:
    """Run one pickle stream starting at ``start`` through the restricted VM.

    Nothing is imported or called: globals become :class:`GlobalRef`, calls :class:`Call`.

    Args:
        data: the bytes holding the stream (a memoryview avoids copies).
        start: offset of the stream's first opcode; offsets in the record are into ``data``.
        path: file name used in error messages.
        lenient: on a malformed stream return the partial record with ``error`` and
            ``error_offset`` set instead of raising.
        max_ops, max_depth, max_memo: caps on opcodes run, MARK nesting, memo entries.
        joblib_arrays: read as ``joblib.load`` does: after the BUILD of a joblib
            ``NumpyArrayWrapper`` the array's raw bytes (or a nested pickle for object
            arrays) follow inline; they are skipped and listed in ``inline_arrays``.
            ``pickle.load`` would instead run those bytes as opcodes, so a scanner should
            read a joblib file both ways.

    Returns:
        The :class:`PickleRecord` (``end`` is the offset just after STOP).

    Raises:
        CorruptFile: malformed, truncated or over a cap (unless ``lenient``).
    """
    vm = _VM(_buffer(data), start, max_ops, max_depth, max_memo, joblib_arrays, path)
    try:
        vm.run()
    except _Fail as exc:
        return _failed(vm, exc.reason, exc.offset, path, lenient)
    except (struct.error, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        return _failed(vm, f"{type(exc).__name__}: {exc}", vm.pos, path, lenient)
    return vm.rec


def _buffer(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """The stream's bytes for the VM: the ``bytes`` object itself when ``data`` is one or a
    whole view of one (indexing and slicing ``bytes`` is about twice as fast as a
    memoryview's), else a flat byte view (no copy of a large mapped file)."""
    if type(data) is bytes:
        return data
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    obj = view.obj
    if type(obj) is bytes and view.nbytes == len(obj):
        return obj
    return view


def _failed(vm: _VM, reason: str, offset: int, path: str, lenient: bool) -> PickleRecord:
    if not lenient:
        raise CorruptFile(path, f"pickle: {reason}", offset=offset)
    rec = vm.rec
    rec.error, rec.error_offset, rec.end = reason, offset, vm.pos
    live = [v for v in vm.stack if v is not _MARK]
    rec.value = live[-1] if live else None
    return rec


def read_pickles(
    data: bytes | bytearray | memoryview,
    *,
    path: str = "<pickle>",
    lenient: bool = False,
    start: int = 0,
    max_ops: int = 50_000_000,
    max_streams: int = 100_000,
    joblib_arrays: bool = False,
) -> list[PickleRecord]:
    """Every pickle stream concatenated in ``data`` (read until EOF or trailing garbage).

    A later stream that starts with a byte that is no pickle opcode (garbage, or zero or
    whitespace padding: none of those bytes is an opcode) ends the list quietly; a later stream that starts like a pickle and
    breaks raises (or, when ``lenient``, is returned with its ``error`` and ends the list).

    Raises:
        CorruptFile: the first stream, or a later one that looks like a pickle, is malformed.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    records: list[PickleRecord] = []
    pos = start
    while pos < len(view):
        if records and view[pos] not in _OPCODE_BYTES:  # garbage or padding (\0, \n, space)
            break
        if len(records) >= max_streams:  # never stop silently: a payload could follow
            reason = f"more than {max_streams} concatenated pickle streams"
            if not lenient:
                raise CorruptFile(path, f"pickle: {reason}", offset=pos)
            records.append(PickleRecord(None, 0, [], [], pos, pos, reason, pos))
            break
        rec = read_pickle(
            view, pos, path=path, lenient=lenient, max_ops=max_ops, joblib_arrays=joblib_arrays
        )
        records.append(rec)
        if rec.error is not None or rec.end <= pos:
            break
        pos = rec.end
    return records


def iter_nodes(value: Any, max_nodes: int = 5_000_000):
    """Yield every object reachable from ``value`` once (iteratively, no recursion).

    Containers, Call args/kwargs/state/items and PersistentId pids are descended into.
    Raises CorruptFile-free ValueError when more than ``max_nodes`` distinct objects exist.
    """
    seen: set[int] = set()
    todo = [value]
    count = 0
    while todo:
        obj = todo.pop()
        if isinstance(obj, (str, bytes, int, float, bool, type(None))):
            yield obj
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        count += 1
        if count > max_nodes:
            raise ValueError(f"more than {max_nodes} objects in the pickle")
        yield obj
        todo.extend(children(obj))


def children(obj: Any) -> list[Any]:
    """The direct sub-objects of one VM value (for iterative walkers)."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        out: list[Any] = []
        for k, v in obj.items():
            out.append(k.value if isinstance(k, OpaqueKey) else k)
            out.append(v)
        return out
    if isinstance(obj, Call):
        out = [obj.func, obj.args]
        if obj.kwargs is not None:
            out.append(obj.kwargs)
        if obj.state is not None:
            out.append(obj.state)
        if obj.dictitems is not None:
            out.append(obj.dictitems)
        if obj.listitems is not None:
            out.append(obj.listitems)
        return out
    if isinstance(obj, PersistentId):
        return [obj.pid]
    if isinstance(obj, OpaqueKey):
        return [obj.value]
    return []


def type_name(value: Any) -> str:
    """What a loader would build for ``value``: ``builtins.dict``, ``collections.OrderedDict``..."""
    if isinstance(value, Call):
        return value.qualname
    if isinstance(value, GlobalRef):
        return value.qualname
    if isinstance(value, PersistentId):
        return "<persistent id>"
    if isinstance(value, PickleBuffer):
        return "pickle.PickleBuffer"
    return f"builtins.{type(value).__name__}"
