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
from typing import Any, Callable

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

# ---- opcodes --------------------------------------------------------------------------------
# The opcode bytes of protocols 0-5 under pickletools' names (``pickle.BINPUT == b"q"``).
# The hot loop binds the ones it handles inline to locals: a local costs what a literal
# does, a module global a dictionary check per comparison.
MARK, STOP, POP, POP_MARK, DUP = 0x28, 0x2E, 0x30, 0x31, 0x32
EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT = 0x29, 0x5D, 0x7D
FLOAT, BINFLOAT, INT, BININT, BININT1, BININT2, LONG = 0x46, 0x47, 0x49, 0x4A, 0x4B, 0x4D, 0x4C
NONE, NEWTRUE, NEWFALSE, LONG1, LONG4 = 0x4E, 0x88, 0x89, 0x8A, 0x8B
PERSID, BINPERSID, REDUCE, BUILD, GLOBAL, INST, OBJ = 0x50, 0x51, 0x52, 0x62, 0x63, 0x69, 0x6F
STRING, BINSTRING, SHORT_BINSTRING = 0x53, 0x54, 0x55
UNICODE, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 = 0x56, 0x58, 0x8C, 0x8D
BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8 = 0x42, 0x43, 0x8E, 0x96
APPEND, APPENDS, DICT, LIST, SETITEM, SETITEMS = 0x61, 0x65, 0x64, 0x6C, 0x73, 0x75
GET, BINGET, LONG_BINGET, MEMOIZE = 0x67, 0x68, 0x6A, 0x94
PUT, BINPUT, LONG_BINPUT = 0x70, 0x71, 0x72
TUPLE, TUPLE1, TUPLE2, TUPLE3 = 0x74, 0x85, 0x86, 0x87
PROTO, NEWOBJ, NEWOBJ_EX, STACK_GLOBAL, FRAME = 0x80, 0x81, 0x92, 0x93, 0x95
EXT1, EXT2, EXT4 = 0x82, 0x83, 0x84
EMPTY_SET, ADDITEMS, FROZENSET = 0x8F, 0x90, 0x91
NEXT_BUFFER, READONLY_BUFFER = 0x97, 0x98

# every constant above, by code (tests/pickle/test_opcodes.py checks them against pickletools)
_NAME_OF = {
    code: name
    for name, code in list(globals().items())
    if name.isupper() and type(code) is int and 0x28 <= code <= 0x98
}
# opcode byte -> name, for every opcode of protocols 0-5 (used by read_pickles' garbage test,
# the pickle sniffer and error messages)
OPCODE_NAMES = {bytes([code]): name for code, name in _NAME_OF.items()}
_OPCODE_BYTES = frozenset(_NAME_OF)
_U32 = struct.Struct("<I")  # LONG_BINPUT / LONG_BINGET / BINUNICODE arguments
_I32 = struct.Struct("<i")  # BININT
# argument bytes of the inline opcodes whose argument the hot loop reads without a bounds
# test (a short read raises IndexError or struct.error, turned into the same message)
_ARG_BYTES = {
    BINPUT: 1,
    LONG_BINPUT: 4,
    BININT1: 1,
    BINGET: 1,
    LONG_BINGET: 4,
    BININT2: 2,
    BININT: 4,
    BINUNICODE: 4,
    SHORT_BINUNICODE: 1,
}


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


# the VM's handlers of the opcodes its hot loop does not take inline: opcode -> function
_HANDLERS: dict[int, Callable[[_VM, int, int], bool | None]] = {}  # True: STOP
# bytes of the length (or code) that follows these opcodes
_LENGTH_BYTES = {
    BINBYTES: 4,
    SHORT_BINBYTES: 1,
    BINBYTES8: 8,
    BYTEARRAY8: 8,
    EXT1: 1,
    EXT2: 2,
    EXT4: 4,
}


def _handles(*codes: int) -> Callable[[Callable], Callable]:
    """Register a :class:`_VM` method as the handler of opcodes ``codes``."""

    def register(fn: Callable) -> Callable:
        for code in codes:
            _HANDLERS[code] = fn
        return fn

    return register


def _utf8(raw: bytes | memoryview, at: int) -> str:
    try:
        return str(raw, "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _Fail("string is not valid UTF-8", at) from None


def _text(raw: bytes) -> str:
    """A protocol-0 name line: UTF-8 when it is, else latin-1 (lossless for any bytes)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _int_arg(text: bytes, at: int) -> int:
    if len(text) > 4000:  # CPython refuses >4300 digits too; this also keeps it linear
        raise _Fail("integer literal too long", at)
    try:
        return int(text)
    except ValueError:
        raise _Fail(f"bad integer literal {text[:20]!r}", at) from None


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

    def length(self, width: int, at: int, negative: str = "") -> int:
        """A ``width``-byte little-endian length; signed when a ``negative`` one has a
        message (it is refused with it)."""
        k = int.from_bytes(self.take(width, at), "little", signed=bool(negative))
        if k < 0:
            raise _Fail(negative, at)
        return k

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
        2) and of protocol 4/5 pickles are handled inline, most frequent first.  Every other
        opcode goes through its handler in :data:`_HANDLERS` with the state synced to the
        attributes.

        Failure offsets and the partial state a lenient record sees (``self.pos``,
        ``self.stack``) are the same as one opcode at a time through the helpers would give.
        """
        data, rec, n, memo = self.data, self.rec, self.n, self.memo
        metastack = self.metastack
        stack = self.stack
        pos = self.pos
        n_ops = self._n_ops
        max_memo, max_depth, max_ops = self.max_memo, self.max_depth, self.max_ops
        max_stack = self.max_stack
        calls_append = rec.calls.append
        pids_append = rec.persistent_ids.append
        unpack_u32, unpack_i32 = _U32.unpack_from, _I32.unpack_from
        mark, call_cls, pid_cls, new = _MARK, Call, PersistentId, object.__new__
        handlers, arg_bytes = _HANDLERS, _ARG_BYTES
        # the inline opcodes as locals (see the opcode table)
        o_binput, o_long_binput, o_binget, o_long_binget = BINPUT, LONG_BINPUT, BINGET, LONG_BINGET
        o_binint1, o_binint2, o_binint, o_mark = BININT1, BININT2, BININT, MARK
        o_binunicode, o_short_binunicode = BINUNICODE, SHORT_BINUNICODE
        o_tuple, o_tuple1, o_tuple2, o_tuple3 = TUPLE, TUPLE1, TUPLE2, TUPLE3
        o_reduce, o_binpersid, o_memoize = REDUCE, BINPERSID, MEMOIZE
        o_newfalse, o_newtrue, o_none, o_empty_tuple = NEWFALSE, NEWTRUE, NONE, EMPTY_TUPLE
        in_handler = False
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
                try:  # an argument read past the data's end raises: see _ARG_BYTES
                    if op == o_long_binput or op == o_binput:
                        if op == o_binput:
                            arg = data[at + 1]
                            pos = at + 2
                        else:
                            arg = unpack_u32(data, at + 1)[0]
                            pos = at + 5
                        if not stack or stack[-1] is mark:
                            raise _Fail("stack underflow", at)
                        if len(memo) >= max_memo and arg not in memo:
                            raise _Fail(f"memo larger than {max_memo} entries", at)
                        memo[arg] = stack[-1]
                    elif op == o_binint1:
                        stack.append(data[at + 1])
                        pos = at + 2
                    elif op == o_binget or op == o_long_binget:
                        if op == o_binget:
                            arg = data[at + 1]
                            pos = at + 2
                        else:
                            arg = unpack_u32(data, at + 1)[0]
                            pos = at + 5
                        try:
                            stack.append(memo[arg])
                        except KeyError:
                            raise _Fail(f"memo key {arg} was never stored", at) from None
                    elif op == o_mark:
                        metastack.append(stack)
                        stack = []
                        pos = at + 1
                        if len(metastack) > max_depth:
                            raise _Fail(f"MARKs nested deeper than {max_depth}", at)
                    elif op == o_binunicode:
                        k = unpack_u32(data, at + 1)[0]
                        end = at + 5 + k
                        if end > n:
                            raise _Fail(f"needs {k} bytes but only {n - at - 5} are left", at)
                        try:
                            stack.append(str(data[at + 5 : end], "utf-8", "surrogatepass"))
                        except UnicodeDecodeError:
                            raise _Fail("string is not valid UTF-8", at) from None
                        pos = end
                    elif op == o_tuple:
                        if not metastack:
                            raise _Fail("no MARK to pop to", at)
                        items = stack
                        stack = metastack.pop()
                        stack.append(tuple(items))
                        pos = at + 1
                    elif op == o_tuple2:
                        if len(stack) < 2:
                            raise _Fail("stack underflow", at)
                        a, b = stack[-2], stack[-1]
                        if a is mark or b is mark:
                            raise _Fail("unexpected MARK on the stack", at)
                        del stack[-1]
                        stack[-1] = (a, b)
                        pos = at + 1
                    elif op == o_reduce:
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
                    elif op == o_binpersid:
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
                    elif op == o_newfalse:
                        stack.append(False)
                        pos = at + 1
                    elif op == o_empty_tuple:
                        stack.append(())
                        pos = at + 1
                    elif op == o_binint2:
                        stack.append(data[at + 1] | (data[at + 2] << 8))
                        pos = at + 3
                    elif op == o_binint:
                        pos = at + 1
                        stack.append(unpack_i32(data, at + 1)[0])
                        pos = at + 5
                    elif op == o_memoize:
                        pos = at + 1
                        idx = len(memo)
                        if idx >= max_memo and idx not in memo:
                            raise _Fail(f"memo larger than {max_memo} entries", at)
                        if not stack or stack[-1] is mark:
                            raise _Fail("stack underflow", at)
                        memo[idx] = stack[-1]
                    elif op == o_short_binunicode:
                        pos = at + 1
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
                    elif op == o_tuple1 or op == o_tuple3:
                        count = 1 if op == o_tuple1 else 3
                        if len(stack) < count:
                            raise _Fail("stack underflow", at)
                        items = stack[-count:]
                        if mark in items:  # identity is checked first: placeholders never equal it
                            raise _Fail("unexpected MARK on the stack", at)
                        del stack[-count:]
                        stack.append(tuple(items))
                        pos = at + 1
                    elif op == o_none or op == o_newtrue:
                        stack.append(None if op == o_none else True)
                        pos = at + 1
                    else:  # everything else: the state goes back to the attributes
                        self.stack = stack
                        self.pos = at + 1
                        self._n_ops = n_ops
                        in_handler = True
                        handler = handlers.get(op)
                        if handler is None:
                            raise _Fail(f"unknown opcode 0x{op:02x}", at)
                        if handler(self, op, at):  # STOP
                            rec.n_ops = n_ops
                            return
                        in_handler = False
                        stack = self.stack
                        pos = self.pos
                        rec.n_ops = n_ops
                except (IndexError, struct.error):
                    if in_handler or op not in arg_bytes:
                        raise
                    left = n - at - 1
                    raise _Fail(
                        f"needs {arg_bytes[op]} bytes but only {left} are left", at
                    ) from None
        except BaseException:
            self._n_ops = n_ops
            if not in_handler:
                self.stack = stack
                self.pos = pos
            raise

    # ---- the other opcodes: one handler each, self.pos just past the opcode byte ----------
    @_handles(STOP)
    def _stop(self, op: int, at: int) -> bool:
        self.rec.value = self.pop(at) if self.stack else None
        self.rec.end = self.pos
        return True  # the record is complete

    @_handles(FRAME)
    def _frame(self, op: int, at: int) -> None:  # a length prefix for buffering
        self.take(8, at)  # the opcodes follow inline

    @_handles(SETITEMS)
    def _setitems(self, op: int, at: int) -> None:
        pairs = self.pop_mark(at)
        self.setitems(self.top(at), pairs, at)

    @_handles(SETITEM)
    def _setitem(self, op: int, at: int) -> None:
        v = self.pop(at)
        k = self.pop(at)
        self.setitems(self.top(at), [k, v], at)

    @_handles(APPENDS, ADDITEMS)
    def _appends(self, op: int, at: int) -> None:
        items = self.pop_mark(at)
        self.appends(self.top(at), items, at)

    @_handles(APPEND)
    def _append(self, op: int, at: int) -> None:
        v = self.pop(at)
        self.appends(self.top(at), [v], at)

    @_handles(EMPTY_DICT, EMPTY_LIST, EMPTY_SET)
    def _empty(self, op: int, at: int) -> None:
        self.push({} if op == EMPTY_DICT else [] if op == EMPTY_LIST else set(), at)

    @_handles(BUILD)
    def _build(self, op: int, at: int) -> None:
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

    @_handles(GLOBAL)
    def _global(self, op: int, at: int) -> None:
        module = _text(self.line(at))
        name = _text(self.line(at))
        self.push(self.add_global(module, name, at, "GLOBAL"), at)

    @_handles(STACK_GLOBAL)
    def _stack_global(self, op: int, at: int) -> None:
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

    @_handles(NEWOBJ)
    def _newobj(self, op: int, at: int) -> None:
        args = self.pop(at)
        cls = self.pop(at)
        self.push(self.add_call(cls, args, None, at, "NEWOBJ"), at)

    @_handles(NEWOBJ_EX)
    def _newobj_ex(self, op: int, at: int) -> None:
        kwargs = self.pop(at)
        args = self.pop(at)
        cls = self.pop(at)
        self.push(self.add_call(cls, args, kwargs, at, "NEWOBJ_EX"), at)

    @_handles(PROTO)
    def _proto(self, op: int, at: int) -> None:
        proto = self.take(1, at)[0]
        if proto > 5:
            raise _Fail(f"unsupported pickle protocol {proto}", at)
        self.rec.protocol = max(self.rec.protocol, proto)

    @_handles(POP)
    def _pop(self, op: int, at: int) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark(at)  # POP of an empty stack pops a MARK in CPython

    @_handles(POP_MARK)
    def _pop_mark(self, op: int, at: int) -> None:
        self.pop_mark(at)

    @_handles(DUP)
    def _dup(self, op: int, at: int) -> None:
        self.push(self.top(at), at)

    @_handles(PUT)
    def _put(self, op: int, at: int) -> None:
        self.memo_put(_int_arg(self.line(at), at), at)

    @_handles(GET)
    def _get(self, op: int, at: int) -> None:
        self.memo_get(_int_arg(self.line(at), at), at)

    @_handles(INT)
    def _int(self, op: int, at: int) -> None:  # protocol 0; "01"/"00" are Python 2 booleans
        text = self.line(at)
        self.push(text == b"01" if text in (b"01", b"00") else _int_arg(text, at), at)

    @_handles(LONG)
    def _long(self, op: int, at: int) -> None:  # protocol 0
        text = self.line(at)
        self.push(_int_arg(text[:-1] if text.endswith(b"L") else text, at), at)

    @_handles(LONG1, LONG4)
    def _long_binary(self, op: int, at: int) -> None:
        if op == LONG1:
            k = self.length(1, at)
        else:
            k = self.length(4, at, "LONG4 with a negative byte count")
        self.push(int.from_bytes(self.take(k, at), "little", signed=True), at)

    @_handles(FLOAT)
    def _float(self, op: int, at: int) -> None:
        try:
            self.push(float(self.line(at)), at)
        except ValueError:
            raise _Fail("FLOAT argument is not a number", at) from None

    @_handles(BINFLOAT)
    def _binfloat(self, op: int, at: int) -> None:
        self.push(struct.unpack(">d", self.take(8, at))[0], at)

    @_handles(STRING)
    def _string(self, op: int, at: int) -> None:  # protocol 0, quoted, a Python 2 str
        text = self.line(at)
        if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
            raise _Fail("STRING argument is not quoted", at)
        try:
            raw = codecs.escape_decode(text[1:-1])[0]
        except Exception:  # escape_decode raises ValueError and friends on bad escapes
            raise _Fail("STRING argument has a bad escape", at) from None
        self.rec.py2_strings = True
        self.push(_decode_py2(raw), at)

    @_handles(BINSTRING, SHORT_BINSTRING)
    def _binstring(self, op: int, at: int) -> None:
        if op == BINSTRING:
            k = self.length(4, at, "BINSTRING with a negative length")
        else:
            k = self.length(1, at)
        self.rec.py2_strings = True
        self.push(_decode_py2(bytes(self.take(k, at))), at)

    @_handles(UNICODE)
    def _unicode(self, op: int, at: int) -> None:  # protocol 0, raw-unicode-escape
        try:
            self.push(self.line(at).decode("raw-unicode-escape"), at)
        except UnicodeDecodeError:
            raise _Fail("UNICODE argument is not valid raw-unicode-escape", at) from None

    @_handles(BINUNICODE8)
    def _binunicode8(self, op: int, at: int) -> None:
        self.push(_utf8(self.take(self.length(8, at), at), at), at)

    @_handles(BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8)
    def _bytes(self, op: int, at: int) -> None:
        raw = self.take(self.length(_LENGTH_BYTES[op], at), at)
        self.push(bytearray(raw) if op == BYTEARRAY8 else bytes(raw), at)

    @_handles(NEXT_BUFFER)
    def _next_buffer(self, op: int, at: int) -> None:
        self.push(PickleBuffer(at), at)

    @_handles(READONLY_BUFFER)
    def _readonly_buffer(self, op: int, at: int) -> None:
        buf = self.top(at)
        if isinstance(buf, PickleBuffer):
            self.stack[-1] = PickleBuffer(buf.offset, readonly=True)

    @_handles(LIST)
    def _list(self, op: int, at: int) -> None:
        self.push(self.pop_mark(at), at)

    @_handles(DICT)
    def _dict(self, op: int, at: int) -> None:
        items = self.pop_mark(at)
        d: dict = {}
        self.setitems(d, items, at)
        self.push(d, at)

    @_handles(FROZENSET)
    def _frozenset(self, op: int, at: int) -> None:
        self.push(frozenset(safe_key(v, at) for v in self.pop_mark(at)), at)

    @_handles(PERSID)
    def _persid(self, op: int, at: int) -> None:  # protocol 0: the id is a text line
        pid = PersistentId(_text(self.line(at)), at)
        self.rec.persistent_ids.append(pid)
        self.push(pid, at)

    @_handles(INST)
    def _inst(
        self, op: int, at: int
    ) -> None:  # MARK args... INST module\nname\n -> module.name(*args)
        module = _text(self.line(at))
        name = _text(self.line(at))
        args = tuple(self.pop_mark(at))
        ref = self.add_global(module, name, at, "INST")
        self.push(self.add_call(ref, args, None, at, "INST"), at)

    @_handles(OBJ)
    def _obj(self, op: int, at: int) -> None:  # MARK cls args... OBJ -> cls(*args)
        items = self.pop_mark(at)
        if not items:
            raise _Fail("OBJ without a class", at)
        self.push(self.add_call(items[0], tuple(items[1:]), None, at, "OBJ"), at)

    @_handles(EXT1, EXT2, EXT4)
    def _ext(self, op: int, at: int) -> None:  # a code in copyreg's registry
        code = int.from_bytes(self.take(_LENGTH_BYTES[op], at), "little", signed=op == EXT4)
        ref = self.add_global(
            EXTENSION_MODULE,
            str(code),
            at,
            _NAME_OF[op],
            note="resolved through copyreg's extension registry",
        )
        self.push(ref, at)

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
