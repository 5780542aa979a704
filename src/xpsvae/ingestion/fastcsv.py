"""The fast path for the CSV family (DataLink CSV, ECSV, bulk ``*.csv.gz``): whole chunks at once.

A file is decompressed ahead of the parsing (``isal`` when installed, else
zlib; see :mod:`xpsvae.inflate`) into chunks of complete lines. Each chunk
is then split at its quotes:

* the quoted fields are the arrays (``"[a,b,...]"`` or ``"(a, b, ...)"``), nine
  tenths of the bytes. A column's arrays are parsed in one go: ECSV's
  ``[a,b,...]`` as one JSON document by simdjson, where it is installed
  (:func:`_json_arrays`); otherwise, or where that steps aside, their numbers,
  end to end, become one Arrow string array (the text without its commas, cut
  where the commas were), which Arrow's cast turns into numbers;
* the rest of the text, a placeholder standing for each quoted field, is short:
  Arrow's CSV reader tokenises it, and scalar columns are cast by Arrow.

Anything irregular in a chunk (a blank line, a row with the wrong number of
fields, text that is not a number) raises :class:`Irregular`, and the caller
reads that chunk row by row with the exact, slower parser, so the fast path
never changes what is kept, what is set aside, or the messages.
"""

from __future__ import annotations

import csv
import threading
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

try:  # reads ECSV's arrays nearly twice as fast as Arrow's cast
    import simdjson
except ImportError:  # pragma: no cover - the Arrow path alone
    simdjson = None


class Irregular(Exception):
    """A chunk the fast path does not handle; read it row by row instead."""


def read_header(lines: Iterable[bytes], delimiter: Optional[str] = None
                ) -> Optional[Tuple[List[str], int, str]]:
    """(column names, lines before them, delimiter) of a CSV or ECSV text, from its lines.

    Comment (``#``, the ECSV preamble) and blank lines before the header are
    skipped. With no ``delimiter`` given, ECSV's is read from its YAML header
    (``# delimiter: ','``); without that line it is a space, the ECSV default
    (astropy writes such files); plain CSV's is a comma. None: no header line.
    """
    found = ","
    for comments, line in enumerate(lines):
        text = line.decode("utf-8", errors="replace").strip()
        if comments == 0 and text.startswith("# %ECSV"):
            found = " "
        elif text.startswith("# delimiter:"):
            found = text.split(":", 1)[1].strip().strip("'\"") or " "
        elif text and not text.startswith("#"):
            delimiter = delimiter or found
            return next(csv.reader([text], delimiter=delimiter)), comments, delimiter
    return None


def split_header(chunk: bytes) -> Tuple[Optional[List[str]], bytes]:
    """(header fields, the rest of the chunk) from a file's first chunk, read as CSV.

    Returns a None header when the chunk holds no header line.
    """
    lines = chunk.split(b"\n")
    found = read_header(lines, delimiter=",")
    if found is None:
        return None, b""
    header, before, _ = found
    return header, b"\n".join(lines[before + 1:])


#: Stands for a quoted field in the text of a chunk's other fields (a control character,
#: so that no value of an XP table is mistaken for it).
PLACEHOLDER = "\x1f"


def parse_chunk(chunk: bytes, header: List[str]) -> Tuple[pa.Table, Dict[str, "QuotedFields"]]:
    """Split a chunk of data lines into its quoted fields and the text of the rest.

    The quoted fields are the arrays (``"[a,b,...]"``), nine tenths of a bulk
    file's bytes. Splitting the chunk at its quotes sets them apart in one
    pass, so that Arrow's CSV tokeniser reads only the short scalar fields.

    Returns:
        (fields, quoted): every column as text, with :data:`PLACEHOLDER` where a
        field was quoted; and, per column that has quoted fields, their rows
        and their text without the quotes.

    Raises:
        Irregular: unbalanced or escaped quotes, a blank line, a CR, a row with
            the wrong number of fields (the caller reads the chunk row by row).
    """
    pieces = _split_at_quotes(chunk)
    if len(pieces) % 2 == 0:
        raise Irregular("unbalanced quotes")
    quoted = pieces[1::2]
    text = PLACEHOLDER.encode().join(pieces[0::2])
    if b"\n\n" in text or text.startswith(b"\n") or b"\r" in text:
        raise Irregular("blank line or CR")  # row numbers must match the exact reader's
    rejected: List[int] = []

    def reject(row):
        rejected.append(1)
        return "skip"
    try:
        fields = pcsv.read_csv(
            pa.py_buffer(text),
            read_options=pcsv.ReadOptions(column_names=header, use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=reject),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header}))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise Irregular(str(exc)) from None
    if rejected:
        raise Irregular(f"{len(rejected)} rows with the wrong number of fields")
    # The quoted fields, in file order, are the placeholder cells in row-major order.
    is_quoted = np.column_stack([pc.equal(fields.column(name), PLACEHOLDER)
                                 .to_numpy(zero_copy_only=False) for name in header]) \
        if fields.num_rows else np.zeros((0, len(header)), dtype=bool)
    rows, columns = np.nonzero(is_quoted)
    if len(rows) != len(quoted):  # an escaped quote, or a value that is the placeholder
        raise Irregular("quoted fields do not match the cells")
    by_column: Dict[str, QuotedFields] = {}
    for column in np.unique(columns):
        which = np.flatnonzero(columns == column)
        by_column[header[column]] = QuotedFields(rows[which], [quoted[i] for i in which])
    return fields, by_column


def _split_at_quotes(chunk: bytes) -> List[bytes]:
    """``chunk.split(b'"')``, 2-3x faster on the bulk files' chunks: ``find`` runs memchr
    over the long quoted arrays, where ``split`` compares byte by byte."""
    pieces: List[bytes] = []
    find, start = chunk.find, 0
    end = find(b'"')
    while end >= 0:
        pieces.append(chunk[start:end])
        start = end + 1
        end = find(b'"', start)
    pieces.append(chunk[start:])
    return pieces


class QuotedFields(NamedTuple):
    """A column's quoted fields in a chunk: their row numbers and their text."""

    rows: np.ndarray
    texts: List[bytes]


def number_column(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
    """Text column to numbers; empty text is null. Raises Irregular on anything else."""
    empty = pc.equal(pc.utf8_length(column), 0)
    try:
        return pc.cast(pc.if_else(empty, pa.scalar(None, pa.string()), column), type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise Irregular(str(exc)) from None


def array_column(cells: pa.ChunkedArray, quoted: Optional[QuotedFields], type_: pa.DataType
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Parse a column of bracketed arrays, from :func:`parse_chunk`'s output.

    Args:
        cells: the column's text (the placeholder where a field was quoted).
        quoted: the column's quoted fields (None: it has none).
        type_: the numbers' Arrow type.

    Returns:
        (values, counts): every row's numbers end to end (NaN for ``nan``/``null``
        elements) and the number of values in each row (0: an empty field, a
        missing array).

    Raises:
        Irregular: a field that is not a quoted, bracketed list of numbers.
    """
    counts = np.zeros(len(cells), dtype=np.int64)
    rows, texts = quoted if quoted is not None else (np.zeros(0, dtype=np.int64), [])
    # Every other cell must be empty (a missing array), not an unquoted value.
    if (pc.sum(pc.utf8_length(cells)).as_py() or 0) != len(rows) * len(PLACEHOLDER):
        raise Irregular("an array field not in quotes")
    if not texts:
        return np.zeros(0), counts
    if not all(len(t) > 2 and t[:1] + t[-1:] in (b"[]", b"()") for t in texts):
        raise Irregular("not a bracketed array")
    # DataLink CSV writes "(a, b, ...)"; a space anywhere else makes the cast refuse.
    loose = texts[0][:1] == b"("
    parsed = None if loose else _json_arrays(texts)
    if parsed is not None:
        values, counts[rows] = parsed
        return values.astype(type_.to_pandas_dtype(), copy=False), counts
    bodies = [t[1:-1].replace(b", ", b",") if loose else t[1:-1] for t in texts]
    # All the numbers, end to end, as one Arrow string array: the text without its commas,
    # cut where the commas were. Arrow's cast then parses them all at C speed.
    joined = b",".join(bodies)
    commas = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == ord(","))
    digits = joined.replace(b",", b"")
    offsets = np.empty(len(commas) + 2, dtype=np.int32)
    offsets[0], offsets[-1] = 0, len(digits)
    offsets[1:-1] = commas - np.arange(len(commas))
    numbers = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets),
                                          pa.py_buffer(digits))
    try:  # parses as Python's float() does, or refuses: "", "null", "1_0", " 1"
        values = pc.cast(numbers, pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise Irregular(str(exc)) from None
    # The commas join inserted between arrays give each array's count.
    array_ends = np.cumsum([len(b) + 1 for b in bodies[:-1]], dtype=np.int64) - 1
    counts[rows] = np.diff(np.searchsorted(commas, array_ends), prepend=-1,
                           append=len(commas))
    # Parsed as float64 then rounded, as the exact parser does, whatever the column's type.
    return values.astype(type_.to_pandas_dtype(), copy=False), counts


_json_parsers = threading.local()


def _json_arrays(texts: List[bytes]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """ECSV's ``[a,b,...]`` arrays, read as one JSON array of arrays by simdjson.

    Nearly twice as fast as the Arrow cast of :func:`array_column`
    (docs/design/ingest.md): one pass over the text, where the cast needs
    the commas taken out first. It holds the GIL while it parses, which is
    why a gzip'd file is inflated by ISA-L's thread, which releases it
    (:mod:`xpsvae.ingestion.inflate`). JSON's numbers are a subset of
    what Python's float() reads, and simdjson rounds them as it does, so
    every array JSON accepts gets the exact parser's values, except two
    cases guarded here: a nested array (JSON flattens it) and the integer
    ``-0`` (JSON gives +0.0). A line break inside a field is the caller's to
    refuse: the chunk's rows would not be its lines
    (:func:`xpsvae.xpformats.parse_chunk_rows` checks).

    Returns:
        (values end to end as float64, each array's count), or None where
        simdjson is not installed or the text is not such JSON (the caller
        then takes the Arrow path, which decides).
    """
    # An inner "]" before the last would be a nested array.
    if simdjson is None or not all(t[:1] == b"[" and t.find(b"]") == len(t) - 1
                                   for t in texts):
        return None
    # The brackets go on the first and last arrays: around the joined text, each would copy
    # all of it again.
    document = b",".join([b"[" + texts[0], *texts[1:-1], texts[-1] + b"]"]) \
        if len(texts) > 1 else b"[" + texts[0] + b"]"
    parser = getattr(_json_parsers, "parser", None)
    if parser is None:  # one per thread, kept: its buffers cost more to make than a parse
        parser = _json_parsers.parser = simdjson.Parser()
    try:  # (a parser is reusable once no document of it lives, hence the finally)
        arrays = parser.parse(document)
        values = np.frombuffer(arrays.as_buffer(of_type="d"), dtype=np.float64)
        counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(texts))
    except (ValueError, TypeError, RuntimeError):  # not JSON, or not all numbers
        return None
    finally:
        arrays = None
    if not values.all() and (b"-0," in document or b"-0]" in document):
        return None  # a zero that may be the integer -0 (float("-0") is -0.0)
    return values, counts


def row_flags(values: np.ndarray, counts: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per row: does any of its values have ``bad`` set."""
    cumulative = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    ends = np.cumsum(counts)
    return cumulative[ends] - cumulative[ends - counts] > 0


def list_array(values: np.ndarray, counts: np.ndarray, missing: np.ndarray,
               type_: pa.DataType) -> pa.Array:
    """A list column from values end to end, per-row counts and a missing-row mask."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=type_),
                                    mask=pa.array(missing))

