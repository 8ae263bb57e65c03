"""Read one pickle stream with CPython's own unpickler, inertly, and record what it did.

The loader's parser is the scanner's parser: :class:`_CReader` subclasses the C
``_pickle.Unpickler`` (what ``pickle.load``, ``torch.load`` and ``np.load`` run) and
:class:`_PyReader` the pure-Python ``pickle._Unpickler`` (what ``joblib.load`` and
``dill.load`` run).  Only two hooks change: ``find_class`` records the global and returns
a fresh stand-in class instead of importing, and ``persistent_load`` records the id and
returns a stand-in.  Every opcode then does what it does in the loader, with stand-ins
flowing through: calling a stand-in class (REDUCE, OBJ, INST) or creating one (NEWOBJ,
NEWOBJ_EX, which need a real type) records the call and returns a stand-in result; BUILD,
SETITEMS, APPENDS, ADDITEMS on stand-ins record nothing harmful; EXT1/2/4 reach
``find_class`` through copyreg's registry as in the loader.  Nothing from the file is
imported or called.

What ``find_class`` saw is exactly what the loader would import.  A stream that fails
part-way keeps everything recorded before the failure: the loader has run it too.
The reader is bounded by :mod:`.oplex` (memo, opcode count, time, sizes).
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import copyreg
import io
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from .oplex import Capped, GuardedReader, cleared_stream, opcode_name

MAX_CALLS = 1_000_000  # ~20k in a 10k-tensor checkpoint; ~250 bytes each with args
MAX_PERSISTENT = 1_000_000
MAX_NAME = 1000  # characters of module + name kept for a global
MAX_GLOBALS = 200_000  # find_class calls (a pickler names each global once: memo)
JOBLIB_WRAPPERS = frozenset(
    (
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
    )
)
# torch's UnpicklerWrapper.find_class renames this module before importing
TORCH_MODULE_MAPPING = {"torch.tensor": "torch._tensor"}


@dataclass(slots=True)
class Global:
    """One ``find_class`` call: the global the loader would import."""

    offset: int | None  # the GLOBAL/STACK_GLOBAL/INST/EXT opcode, when known
    opcode: str
    module: str  # as the loader resolves it (Python 2 names mapped below protocol 3)
    name: str
    raw: tuple[str, str] | None = None  # the names in the file, when resolving changed them

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(slots=True)
class CallRecord:
    """A call the loader would make. ``kind``: ``call`` (REDUCE/OBJ/INST on a global),
    ``new`` (NEWOBJ/NEWOBJ_EX/INST/OBJ through ``cls.__new__``), ``dynamic`` (the callable
    was itself produced at load time), ``build-global`` / ``mutate-global`` (BUILD,
    SETITEM(S), APPEND(S), ADDITEMS applied to a global itself)."""

    kind: str
    callee: Global | None
    args: tuple = ()
    kwargs: dict | None = None
    offset: int | None = None


@dataclass
class StreamRecord:
    """What one stream made the unpickler do."""

    start: int
    end: int = 0  # first byte the loader did not read
    value: Any = None  # the unpickled value (stand-ins inside); None on error
    globals: list[Global] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    persistent_ids: list[Any] = field(default_factory=list)
    ext: list[tuple[int, int]] = field(default_factory=list)  # (offset, code) of EXT opcodes
    results: list["Result"] = field(default_factory=list)  # per call and persistent id
    protocol: int = 0  # the highest PROTO seen
    py2_text: bool = False  # STRING/BINSTRING/SHORT_BINSTRING seen
    error: str = ""  # why the loader stops (its own error)
    capped: str = ""  # why the scan stopped (its own limit)
    dynamic: str = ""  # a failure only stand-ins cause: a computed name or class
    error_offset: int | None = None
    n_ops: int = 0


# ---- stand-ins --------------------------------------------------------------------------


class Stub(type):
    """Metaclass of the stand-ins ``find_class`` returns (one fresh class per global)."""

    _rec: "_Recorder"
    _global: Global

    def __call__(cls, *args, **kwargs):
        return cls._rec.call("call", cls._global, args, kwargs)

    # on the metaclass, so that they apply to the global itself (BUILD on a global)
    def __setstate__(cls, state):
        cls._rec.call("build-global", cls._global, (state,), None)

    def __setitem__(cls, key, value):
        cls._rec.call("mutate-global", cls._global, (key, value), None)

    def append(cls, item):
        cls._rec.call("mutate-global", cls._global, (item,), None)

    def extend(cls, items):
        cls._rec.call("mutate-global", cls._global, (list(items),), None)

    def add(cls, item):
        cls._rec.call("mutate-global", cls._global, (item,), None)


def _stub_new(cls, *args, **kwargs):
    return cls._rec.call("new", cls._global, args, kwargs)


class Result:
    """A stand-in for what a call (or a persistent id) would have returned.

    It keeps what the stream put into it (BUILD's state, SETITEM(S) pairs, APPEND(S) and
    ADDITEMS items) and, for a persistent id, the id: torch's reader names tensors from
    them (:mod:`keishiki.formats._torch_pickle`), so one reading serves the reader and the
    scan.  Keeping them changes nothing the loader does.
    """

    __slots__ = (
        "call",
        "state",
        "_rec",
        "dictitems",
        "listitems",
        "pid",
        "at",
        "n_build",
        "__weakref__",
    )

    def __init__(self, rec: "_Recorder", call: CallRecord | None):
        self._rec, self.call, self.state = rec, call, None
        self.dictitems = self.listitems = self.pid = None
        self.at = self.n_build = 0

    def __call__(self, *args, **kwargs):  # REDUCE on a load-time object: a gadget chain
        return self._rec.call("dynamic", None, (self,) + args, kwargs)

    def __setstate__(self, state):
        self.state = state
        self.n_build += 1

    def __setitem__(self, key, value):
        # pairs, not a dict: a key need not be hashable, and the loader does not hash it
        if self.dictitems is None:
            self.dictitems = []
        self.dictitems.append((key, value))

    def append(self, item):
        if self.listitems is None:
            self.listitems = []
        self.listitems.append(item)

    def extend(self, items):
        if self.listitems is None:
            self.listitems = []
        self.listitems.extend(items)

    add = append

    @property
    def qualname(self) -> str:
        """The global whose call produced this, or ``<persistent id>``/``<dynamic>``."""
        if self.call is None:
            return "<persistent id>"
        return self.call.callee.qualname if self.call.callee else "<dynamic>"


# ---- recording --------------------------------------------------------------------------


class _Recorder:
    """The state both unpickler classes share for one stream."""

    def __init__(
        self, reader: Any, record: StreamRecord, torch_names: bool, deadline: float = float("inf")
    ):
        self.reader, self.record, self.torch_names = reader, record, torch_names
        # per call and persistent id (thousands per checkpoint): no attribute chains
        self.calls, self.results, self.ids = record.calls, record.results, record.persistent_ids
        self.where = reader.tell if isinstance(reader, _Position) else lambda: reader.pos
        self.deadline = deadline
        self.k = 0  # find_class calls so far: the k-th naming opcode of the lexer
        self.stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> type:
        lexer = self.reader.lexer
        offset, opcode = None, "GLOBAL"
        if self.k < len(lexer.naming_at):
            offset, opcode = lexer.naming_at[self.k], opcode_name(lexer.naming_op[self.k])
        self.k += 1
        if len(module) + len(name) > MAX_NAME:  # no importable name is this long
            module, name = module[: MAX_NAME // 2] + "...", name[: MAX_NAME // 2] + "..."
        raw = (module, name)
        if lexer.proto_at(self.reader.pos) < 3:
            # what pickle's own find_class does for protocols 0-2 (fix_imports=True)
            if raw in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[raw]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if self.torch_names:
            module = TORCH_MODULE_MAPPING.get(module, module)
        ref = Global(offset, opcode, module, name, raw if raw != (module, name) else None)
        if len(self.record.globals) >= MAX_GLOBALS:
            raise Capped(f"more than {MAX_GLOBALS} globals named in one stream")
        self.record.globals.append(ref)
        # one stand-in per global, as the loader gets one object per module attribute (and
        # a stream repeating GLOBAL a million times must not make a million classes)
        stub = self.stubs.get((module, name))
        if stub is None:
            stub = self.stubs[(module, name)] = Stub(
                "Global", (), {"__new__": _stub_new, "__slots__": (), "_rec": self, "_global": ref}
            )
        return stub

    def call(self, kind: str, callee: Global | None, args: tuple, kwargs) -> Result:
        calls = self.calls
        n = len(calls)
        if n >= MAX_CALLS:
            raise Capped(f"more than {MAX_CALLS} calls in one stream")
        if n & 0xFFF == 0xFFF and time.monotonic() > self.deadline:
            raise Capped(f"time limit reached after {n} calls")
        rec = CallRecord(kind, callee, args, kwargs or None, self.where())
        calls.append(rec)
        result = Result(self, rec)
        self.results.append(result)
        return result

    def persistent_load(self, pid: Any) -> Result:
        pids = self.ids
        if len(pids) >= MAX_PERSISTENT:
            raise Capped(f"more than {MAX_PERSISTENT} persistent ids in one stream")
        pids.append(pid)
        result = Result(self, None)
        result.pid, result.at = pid, self.where()
        self.results.append(result)
        return result


class _CReader(_pickle.Unpickler):
    """The C unpickler with recording hooks."""

    def __init__(self, source: Any, rec: _Recorder):
        super().__init__(source, encoding="latin1")
        self._rec = rec

    def find_class(self, module, name):
        return self._rec.find_class(module, name)

    def persistent_load(self, pid):
        return self._rec.persistent_load(pid)


class _PyReader(pickle._Unpickler):
    """The pure-Python unpickler with recording hooks; with ``joblib`` set, BUILD on a
    joblib array wrapper steps over the array data that follows it, as joblib.load does."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, source: Any, rec: _Recorder, joblib: bool = False):
        super().__init__(source, encoding="latin1")
        self._rec, self._joblib = rec, joblib

    def find_class(self, module, name):
        return self._rec.find_class(module, name)

    def persistent_load(self, pid):
        return self._rec.persistent_load(pid)

    def load_build(self):
        pickle._Unpickler.load_build(self)
        top = self.stack[-1]
        if self._joblib and isinstance(top, Result) and _is_joblib_wrapper(top):
            from .joblib_arrays import skip_array  # noqa: PLC0415

            skip_array(self, top)

    dispatch[pickle.BUILD[0]] = load_build


# calls that make an instance of the class they are given (joblib's isinstance sees it)
_INSTANCE_MAKERS = frozenset(
    ("copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__")
)


def _is_joblib_wrapper(obj: Result) -> bool:
    """Whether joblib.load's ``isinstance(obj, NumpyArrayWrapper)`` would be true: the
    wrapper made by a call of its class, or by a copyreg helper given its class."""
    if obj.qualname in JOBLIB_WRAPPERS:
        return True
    call = obj.call
    if call is None or call.callee is None or call.callee.qualname not in _INSTANCE_MAKERS:
        return False
    first = call.args[0] if call.args else None
    return isinstance(first, Stub) and first._global.qualname in JOBLIB_WRAPPERS


_STAND_IN_ERRORS = (
    "STACK_GLOBAL requires str",
    "must be a type",
    "isn't a type object",
    "is not a type object",
)


class _Position:
    """Where the loader's file position is, for an up-front-cleared stream (a BytesIO)."""

    def __init__(self, lexer, bio: io.BytesIO, start: int):
        self.lexer, self.bio, self.start = lexer, bio, start
        self._tell = bio.tell

    @property
    def pos(self) -> int:
        return self.start + self._tell()

    def tell(self) -> int:
        """``pos`` as a method (the recorder calls it per call and persistent id)."""
        return self.start + self._tell()


# Readings kept for a second reader of the same bytes: ``inspect`` reads a torch pickle for
# its tensors (``share=True``) and then scans it.  A record depends only on the stream's own
# bytes (through its STOP), where it starts and how it is read, so an entry is reused only
# when all of those are equal, only when its reading ended cleanly at the STOP (a cut-off
# reading may depend on the time left), and once (the scan takes it out).  Kept records
# are few and small in objects: everything they hold stays alive for the collector to walk.
SHARED_STREAMS = 8  # a legacy torch file is five streams
SHARED_BYTES = 16 << 20
SHARED_OPS = 2_000_000  # opcodes of all kept readings together (~ objects they hold)
# (key, stream bytes, record), oldest first
_SHARED: list[tuple[tuple, bytes, StreamRecord]] = []


def _take_shared(data: memoryview, key: tuple) -> tuple[bytes, StreamRecord] | None:
    start = key[0]
    for i in range(len(_SHARED) - 1, -1, -1):
        k, stream, record = _SHARED[i]
        if k == key and bytes(data[start : start + len(stream)]) == stream:
            del _SHARED[i]
            return stream, record
    return None


def _share(key: tuple, stream: bytes, record: StreamRecord) -> None:
    if len(stream) > SHARED_BYTES or record.n_ops > SHARED_OPS:
        return
    _SHARED[:] = [e for e in _SHARED if e[0] != key]
    _SHARED.append((key, stream, record))
    while len(_SHARED) > SHARED_STREAMS or sum(e[2].n_ops for e in _SHARED) > SHARED_OPS:
        del _SHARED[0]


def read_stream(
    data: memoryview,
    start: int,
    deadline: float,
    *,
    python: bool = False,
    joblib: bool = False,
    torch_names: bool = False,
    share: bool = False,
) -> StreamRecord:
    """Unpickle one stream of ``data`` at ``start`` inertly and return what it did.

    With ``share``, a clean reading is kept for the next reader of the same stream, which
    gets the same record object instead of reading again (see ``_SHARED``): treat records
    as read-only.

    Args:
        data: the bytes (a file's mapping or an archive member).
        start: where the loader's file position is.
        deadline: ``time.monotonic()`` value at which reading stops (``capped``).
        python: use ``pickle._Unpickler`` (joblib, dill) instead of the C unpickler.
        joblib: step over joblib's array data after each NumpyArrayWrapper (implies python).
        torch_names: apply torch's own module renames (``torch.tensor`` -> ``torch._tensor``).

    Returns:
        A :class:`StreamRecord`; never raises for anything the bytes contain.
    """
    key = (start, python, joblib, torch_names, bytes(data[start : start + 64]))
    known = _take_shared(data, key)
    if known is not None:
        if share:  # a reader again (inspect twice): the scan may still follow
            _share(key, *known)
        return known[1]
    record = StreamRecord(start)
    if joblib:
        # joblib reads array data between opcodes: clear opcodes as they are read
        source: Any = GuardedReader(data, start, deadline)
        where: Any = source
    else:
        # one lexing pass to the STOP, then serve what it cleared
        lexer, source = cleared_stream(data, start, deadline)
        where = _Position(lexer, source, start) if isinstance(source, io.BytesIO) else source
    rec = _Recorder(where, record, torch_names, deadline)
    if python or joblib:
        unpickler: Any = _PyReader(source, rec, joblib)
    else:
        unpickler = _CReader(source, rec)
    # EXT opcodes resolve through copyreg, which caches what find_class returned: keep
    # stand-ins out of the process's cache (and real objects out of this scan)
    copyreg.clear_extension_cache()
    try:
        record.value = unpickler.load()
    except Capped as exc:
        record.capped = str(exc)
    except RecursionError:
        record.capped = "nesting deeper than the interpreter's recursion limit"
    except MemoryError:
        record.capped = "the stream asks for more memory than the scan allows"
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises, it stops there
        message = f"{type(exc).__name__}: {exc}"[:300]
        if any(text in message for text in _STAND_IN_ERRORS):
            record.dynamic = message
        else:
            record.error = message
    finally:
        copyreg.clear_extension_cache()
    lexer = where.lexer
    record.end = where.pos
    record.n_ops = lexer.n_ops
    if lexer.capped and record.end >= lexer.ok and not record.dynamic:
        record.error, record.capped = "", lexer.capped  # it ran into the scan's limit
    if record.error or record.capped or record.dynamic:
        record.error_offset = record.end
    record.ext = [(at, code) for at, code in lexer.ext if at < record.end]
    record.protocol = max((p for at, p in lexer.protos if at < record.end), default=0)
    record.py2_text = lexer.py2_text
    if (
        share
        and isinstance(source, io.BytesIO)
        and not (record.error or record.capped or record.dynamic)
    ):
        _share(key, source.getvalue()[: record.end - start], record)
    # stand-in classes are freed by the cycle collector, not at once: drop the views they
    # reach, or the caller's mmap cannot close
    lexer.data = memoryview(b"")
    if isinstance(source, GuardedReader):
        source.data = memoryview(b"")
    return record


__all__ = [
    "read_stream",
    "StreamRecord",
    "Global",
    "CallRecord",
    "Result",
    "Stub",
    "JOBLIB_WRAPPERS",
    "Capped",
]
