"""Table files in (CSV / TSV / JSONL / Parquet) with errors that name the file and the line.

pandas reports a bad byte as an offset into its read buffer and a bad JSON line as a
character position; these readers turn every way a file can be unreadable into one
:class:`~ecamp.errors.DataError` naming the file, the line (when there is one) and the fix.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecamp.errors import DataError

if TYPE_CHECKING:  # heavy: imported where used, so `ecamp --help` stays fast
    import pandas as pd

# what pandas / the csv module / gzip raise for a file that is not a readable table
_READ_ERRORS = (
    ValueError,  # ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
    OSError,  # includes gzip.BadGzipFile
    EOFError,  # a truncated gzip stream
    zlib.error,
    csv.Error,
    OverflowError,
    IndexError,  # pandas' python engine on some ragged files
    TypeError,
)


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def first_non_utf8_line(path: str | Path) -> tuple[int, int, bytes] | None:
    """(line number, column, the offending bytes) of the first line that is not UTF-8, or None."""
    p = Path(path)
    try:
        with _open_bytes(p) as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return n, e.start + 1, raw[e.start : e.end]
    except (OSError, EOFError, zlib.error):
        return None
    return None


def _not_utf8(path: Path, e: UnicodeDecodeError | None = None) -> DataError:
    where = first_non_utf8_line(path)
    if where is None:
        return DataError(f"{path}: not UTF-8 text ({e}); save the file as UTF-8")
    line, col, raw = where
    return DataError(
        f"{path}: line {line} is not UTF-8 text (byte(s) {raw!r} at column {col}); "
        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def read_csv(path: str | Path, sep: str = ",", what: str = "table", **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` whose failures are DataErrors naming the file and line."""
    import pandas as pd

    p = Path(path)
    try:
        return pd.read_csv(p, sep=sep, **kwargs)
    except UnicodeDecodeError as e:
        raise _not_utf8(p, e) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: the {what} file is empty; it needs at least a header line") from None
    except _READ_ERRORS as e:
        kind = "TSV" if sep == "\t" else "CSV"
        raise DataError(f"{p}: cannot read the {what} as {kind} ({_short(e)})") from None


def read_jsonl(path: str | Path, what: str = "table") -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a bad line is named by its number."""
    import pandas as pd

    p = Path(path)
    records: list[dict[str, Any]] = []
    try:
        with _open_bytes(p) as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    raise _not_utf8(p) from None
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{p}: line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                        "each line must hold one JSON object"
                    ) from None
                except (ValueError, RecursionError) as e:
                    raise DataError(f"{p}: line {n} is not valid JSON ({_short(e)})") from None
                if not isinstance(rec, dict):
                    raise DataError(
                        f"{p}: line {n} holds a JSON {type(rec).__name__}, not an object "
                        '({"column": value, ...}); each line must hold one JSON object'
                    )
                records.append(rec)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{p}: cannot read the {what} ({_short(e)})") from None
    try:
        return pd.DataFrame.from_records(records)
    except _READ_ERRORS as e:  # pragma: no cover - from_records accepts any list of dicts
        raise DataError(f"{p}: cannot build a table from its lines ({_short(e)})") from None


def read_json(path: str | Path, what: str = "table") -> pd.DataFrame:
    """A ``.json`` file: a list of objects, or (as ``ecamp distill`` writes) JSON lines."""
    import pandas as pd

    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _not_utf8(p) from None
    except (ValueError, RecursionError):
        return read_jsonl(p, what)  # several objects, one per line
    except OSError as e:
        raise DataError(f"{p}: cannot read the {what} ({_short(e)})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{p}: a JSON {what} must be a list of objects or one object per line")
    return pd.DataFrame.from_records(data)


def read_parquet(path: str | Path, what: str = "table") -> pd.DataFrame:
    """``pandas.read_parquet``; a damaged file is a DataError naming it."""
    import pandas as pd

    p = Path(path)
    try:
        return pd.read_parquet(p)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / ArrowIOError family
        raise DataError(
            f"{p}: not a readable Parquet file ({_short(e)}); it may be truncated: rewrite it"
        ) from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
