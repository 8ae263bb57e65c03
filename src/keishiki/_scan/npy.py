"""``.npy`` headers judged by numpy's own header parser, exactly as ``np.load`` reads them.

``np.load(allow_pickle=True)`` unpickles the bytes after the header whenever the header's
dtype ``hasobject``: ``'O'``, ``'|O'``, ``'>O'``, ``'O8'``, ``'object'``, the same spelled
with escapes or double quotes, an object field anywhere inside a structured or sub-array
dtype.  Guessing that from the header's text misses spellings; asking numpy (``read_magic``,
the version's header reader, ``dtype.hasobject``) cannot.  The header is Python literal
syntax read with ``ast.literal_eval``: nothing is imported or called.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

MAGIC = b"\x93NUMPY"
MAX_HEADER_CHARS = 1 << 20  # numpy allows 10,000 (any size with allow_pickle): 1 MiB to judge
_LENGTH = {1: ("<H", 2), 2: ("<I", 4), 3: ("<I", 4)}


@dataclass
class Header:
    """What numpy reads from a ``.npy`` header."""

    descr: str = ""  # the dtype as numpy builds it
    hasobject: bool = False  # np.load(allow_pickle=True) unpickles what follows
    data_offset: int = 0  # where the array data (or the pickle) starts
    error: str = ""  # numpy refuses the header: np.load raises, nothing is judged


def read_header(data) -> Header:
    """numpy's reading of the header at the start of ``data`` (bytes, mmap or memoryview).

    Never raises: a header numpy refuses comes back with ``error`` set.
    """
    import numpy as np  # noqa: PLC0415 - core dependency, but only needed for .npy files
    from numpy.lib import format as npformat  # noqa: PLC0415

    head = bytes(data[:12])
    if len(head) < 8 or head[:6] != MAGIC:
        return Header(error="no NumPy magic")
    spec = _LENGTH.get(head[6])
    if spec is None or head[7] != 0:
        return Header(error=f"NumPy format version {head[6]}.{head[7]} (numpy reads 1.0-3.0)")
    if len(head) < 8 + spec[1]:
        return Header(error="truncated NumPy header")
    (hlen,) = struct.unpack(spec[0], head[8 : 8 + spec[1]])
    start = 8 + spec[1]
    if hlen > MAX_HEADER_CHARS * 4:
        return Header(error=f"NumPy header of {hlen:,} bytes (too large to judge)")
    fp = io.BytesIO(bytes(data[: start + hlen]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about Python 2 headers
            version = npformat.read_magic(fp)
            _shape, _fortran, dtype = _reader()(fp, version, MAX_HEADER_CHARS)
    except Exception as exc:  # noqa: BLE001 - whatever numpy's parser raises (ValueError,
        # SyntaxError, tokenize.TokenError for a broken Python 2 header...), np.load raises too
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Header(error=f"numpy refuses the header: {first[:200]}")
    if not isinstance(dtype, np.dtype):
        return Header(error="numpy refuses the header: no dtype")
    return Header(str(dtype), bool(dtype.hasobject), fp.tell())


def _reader():
    """numpy's header reader that takes (fp, version, max_header_size)."""
    from numpy.lib import format as npformat  # noqa: PLC0415

    impl = getattr(npformat, "_read_array_header", None)
    if impl is None:
        try:
            from numpy.lib import _format_impl  # noqa: PLC0415 - numpy >= 2.0

            impl = _format_impl._read_array_header
        except (ImportError, AttributeError):
            impl = None
    if impl is not None:
        return impl

    def public(fp, version, max_header_size):  # numpy without the private helper: 1.0/2.0
        read = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(
            version
        )
        if read is None:
            raise ValueError(f"format version {version} not readable by this numpy")
        return read(fp, max_header_size=max_header_size)

    return public
