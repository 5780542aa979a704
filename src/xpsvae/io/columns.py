"""Table columns of any origin (numpy, masked, astropy, pyarrow) as numpy arrays.

The one place a column of per-row arrays (an Arrow list column, a FITS
array column, an object array of lists) becomes a 2-D float64 matrix.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.errors import SpectraError


def arrow_lists_to_2d(column, source: str, name: str, width: Optional[int]) -> np.ndarray:
    """Arrow list column to (n, width) float64 without a Python loop; null rows -> NaN."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(float)
    valid = np.isfinite(lengths)
    if width is None:
        if not valid.any():
            raise SpectraError(f"{source}: column {name!r} holds no arrays")
        values, first, counts = np.unique(lengths[valid], return_index=True, return_counts=True)
        common = counts == counts.max()  # ties: the length met first wins
        width = int(values[common][np.argmin(first[common])])
    wrong = np.flatnonzero(valid & (lengths != width))
    if len(wrong):
        raise SpectraError(f"{source}: row {wrong[0]}, column {name!r}: array of length "
                           f"{int(lengths[wrong[0]])}, expected {width}")
    if valid.all():  # the common case: no copy into a NaN-filled array
        return np.asarray(arr.flatten().to_numpy(zero_copy_only=False),
                          dtype=np.float64).reshape(-1, width)
    out = np.full((len(arr), width), np.nan)
    if valid.any():
        kept = arr.filter(pa.array(valid)) if not valid.all() else arr
        out[valid] = np.asarray(kept.flatten().to_numpy(zero_copy_only=False),
                                dtype=np.float64).reshape(-1, width)
    return out


def is_arrow_lists(column) -> bool:
    """Whether ``column`` is an Arrow array or chunked array of lists."""
    kind = getattr(column, "type", None)
    return isinstance(column, (pa.Array, pa.ChunkedArray)) and kind is not None and (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def column_to_2d(column, source: str, name: str, width: Optional[int] = None) -> np.ndarray:
    """A column of per-row arrays (fixed or list) to a float64 2-D array; null rows -> NaN."""
    if is_arrow_lists(column):
        return arrow_lists_to_2d(column, source, name, width)
    if hasattr(column, "combine_chunks") or hasattr(column, "to_pylist"):  # pyarrow
        rows = column.to_pylist()
    else:
        arr = np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan) \
            if np.ma.isMaskedArray(column) else np.asarray(column)
        if arr.ndim == 2:
            return arr.astype(np.float64)
        if arr.ndim == 1 and arr.dtype != object:
            return arr.astype(np.float64)[:, None]
        rows = list(arr)
    lengths = [len(r) for r in rows if r is not None]
    if width is None:
        if not lengths:
            raise SpectraError(f"{source}: column {name!r} holds no arrays")
        width = Counter(lengths).most_common(1)[0][0]
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r is None:
            continue
        if len(r) != width:
            raise SpectraError(f"{source}: row {i}, column {name!r}: array of length {len(r)}, "
                               f"expected {width}")
        try:
            out[i] = np.asarray(r, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SpectraError(f"{source}: row {i}, column {name!r}: not numeric ({exc})") from exc
    return out


def column_to_1d(column) -> np.ndarray:
    """A table column (numpy, masked, astropy or pyarrow) as a native-endian numpy array."""
    if hasattr(column, "to_numpy") and not isinstance(column, np.ndarray):
        try:
            arr = np.asarray(column.to_numpy(zero_copy_only=False))
        except TypeError:
            arr = np.asarray(column.to_numpy())
    elif np.ma.isMaskedArray(column) and column.dtype.kind in "fiu":
        arr = np.ma.filled(column.astype(np.float64), np.nan)
    else:
        arr = np.asarray(column)
    if arr.dtype.byteorder not in "=|":  # FITS is big-endian; pandas wants native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr

