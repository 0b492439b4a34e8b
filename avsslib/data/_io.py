"""Strict readers for the data files. Every failure is a :class:`DataError` that names the file,
the line (1-based) or record index, the field, and what was expected.

A location string (``where``) travels with each parsed object so that field checks can say
exactly which record was wrong, e.g. ``"/data/nq_open/NQ-open.dev.jsonl, line 3"``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from avsslib.errors import DataError

_FIX = "Replace the file with an intact copy (see MANIFEST.json in the data folder for its sha256)."


def safe_path(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing anything (``..``, symlinks) that leaves ``root``."""
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise DataError(
            f"refusing to read {relative!r}: it resolves to {path}, outside the data directory "
            f"{base}. Data files must lie inside the data directory (no '..' or outward symlinks)."
        )
    return path


def read_text(path: Path) -> str:
    """The whole file as text: gunzipped if it ends in ``.gz``, strict UTF-8 (a leading BOM is
    dropped), never empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if not raw:
        raise DataError(f"{path}: the file is empty (0 bytes); expected data records. {_FIX}")
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{path}: not a complete gzip file ({exc}); it is probably truncated. {_FIX}"
            ) from None
        if not raw:
            raise DataError(f"{path}: decompresses to an empty file; expected data records. {_FIX}")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}, line {line}: byte {raw[exc.start]:#04x} at offset {exc.start} is not valid "
            f"UTF-8; expected UTF-8 text. {_FIX}"
        ) from None


def _loads(text: str, where: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{where}: invalid JSON ({exc}); expected {expected}.") from None


def iter_jsonl(path: Path, expected: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, object)`` for each non-blank line of a JSON-lines file.

    ``expected`` describes one line's object (e.g. ``"an object with 'question' (string) and
    'answer' (list of strings)"``) for the error message. A file with no records is an error.
    """
    count = 0
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        count += 1
        yield where, _loads(line, where, expected)
    if count == 0:
        raise DataError(f"{path}: contains no records (only blank lines); expected {expected}.")


def read_json_list(path: Path, expected: str) -> list[tuple[str, Any]]:
    """A file holding one JSON list; returns ``(where, item)`` with ``where`` naming the index."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); expected a "
            f"JSON list of {expected}."
        ) from None
    except (ValueError, RecursionError) as exc:
        raise DataError(
            f"{path}: invalid JSON ({exc}); expected a JSON list of {expected}."
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: top level is {_kind(data)}; expected a JSON list of {expected}.")
    if not data:
        raise DataError(f"{path}: the JSON list is empty; expected a list of {expected}.")
    return [(f"{path}, record {i} (0-based)", item) for i, item in enumerate(data)]


def read_table(
    path: Path, columns: Sequence[str], *, delimiter: str, quoting: int = csv.QUOTE_MINIMAL
) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV/TSV with a header that must equal ``columns``; ``(where, row)`` pairs.

    ``where`` carries the physical line on which the row ends (quoted CSV fields may span lines).
    """
    reader = csv.reader(
        io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=cast(Any, quoting)
    )
    want = ", ".join(columns)
    try:
        header = next(reader, None)
        if header is None or header == []:
            raise DataError(f"{path}, line 1: no header; expected the columns {want}.")
        if [h.strip() for h in header] != list(columns):
            raise DataError(
                f"{path}, line 1: header is {', '.join(header)}; expected the columns {want}."
            )
        rows = []
        for fields in reader:
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(columns):
                raise DataError(
                    f"{where}: {len(fields)} fields; expected {len(columns)} ({want}), "
                    f"separated by {delimiter!r}."
                )
            rows.append((where, dict(zip(columns, fields, strict=True))))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed table ({exc}).") from None
    if not rows:
        raise DataError(f"{path}: has a header but no data rows; expected rows of {want}.")
    return rows


# ---------------------------------------------------------------- field checks


def _kind(value: Any) -> str:
    names = {
        str: "a string",
        list: "a list",
        dict: "an object",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _bad(where: str, field: str, problem: str, expected: str) -> DataError:
    return DataError(f"{where}: field '{field}' {problem}; expected {expected}.")


def obj(value: Any, where: str, expected: str) -> Mapping[str, Any]:
    """``value`` must be a JSON object (dict)."""
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: found {_kind(value)}; expected {expected}.")
    return value


def _get(record: Mapping[str, Any], field: str, where: str, expected: str) -> Any:
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise _bad(where, field, "is missing", expected)
        value = value[part]
    return value


def text(record: Mapping[str, Any], field: str, where: str) -> str:
    """``record[field]`` (dots for nesting: ``"answer.value"``) must be a string."""
    value = _get(record, field, where, "a string")
    if not isinstance(value, str):
        raise _bad(where, field, f"is {_kind(value)}", "a string")
    return value


def integer(record: Mapping[str, Any], field: str, where: str) -> int:
    """``record[field]`` must be an integer (booleans refused)."""
    value = _get(record, field, where, "an integer")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(where, field, f"is {_kind(value)}", "an integer")
    return value


def texts(
    record: Mapping[str, Any], field: str, where: str, *, nonempty: bool = True
) -> tuple[str, ...]:
    """``record[field]`` must be a list of strings (at least one when ``nonempty``)."""
    expected = "a non-empty list of strings" if nonempty else "a list of strings"
    value = _get(record, field, where, expected)
    if not isinstance(value, list):
        raise _bad(where, field, f"is {_kind(value)}", expected)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _bad(where, f"{field}[{i}]", f"is {_kind(item)}", "a string")
    if nonempty and not value:
        raise _bad(where, field, "is an empty list", expected)
    return tuple(value)


def labels(record: Mapping[str, Any], field: str, where: str, length: int) -> tuple[int, ...]:
    """``record[field]`` must be a list of ``length`` labels, each 0 or 1."""
    expected = f"a list of {length} labels, each 0 or 1"
    value = _get(record, field, where, expected)
    if not isinstance(value, list) or len(value) != length:
        size = f" of length {len(value)}" if isinstance(value, list) else ""
        raise _bad(where, field, f"is {_kind(value)}{size}", expected)
    for i, item in enumerate(value):
        if isinstance(item, bool) or item not in (0, 1):
            raise _bad(where, f"{field}[{i}]", f"is {item!r}", "0 or 1")
    return tuple(int(v) for v in value)


def binary(value: str | int, where: str, field: str) -> int:
    """A 0/1 label given as ``"0"``/``"1"`` (TSV) or ``0``/``1`` (hub rows)."""
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise _bad(where, field, f"is {value!r}", "0 or 1")
    return int(value)
