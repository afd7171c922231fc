"""Reading a user's table: CSV, TSV, JSON lines or Parquet, with a header (or keys) naming columns.

One reader serves training (`--train-file`), evaluation and `aptune predict`, so that the three
accept the same files and refuse bad ones with the same messages.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable
from ..errors import AptuneError
from .base import DataReport, text_problem

csv.field_size_limit(1 << 24)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# The usual names, tried in order when the user names no column.
SINGLE_COLUMNS = ("text", "sentence", "review", "content", "utterance", "query")
PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("text", "text_pair"),
                ("question", "context"), ("question1", "question2"))
LABEL_COLUMNS = ("label", "labels", "class", "category", "intent", "target")


def file_format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise AptuneError(f"{path} is not a file type aptune reads ({path.suffix or 'no suffix'})",
                          f"pass a {', '.join(FORMATS)} file (the suffix names the format)")
    return kind


def read_table(path: str | Path, what: str = "input file") -> tuple[list[str], list[dict | None]]:
    """(column names, rows). A row that cannot be read (a CSV line with the wrong number of fields,
    a JSON line that is not an object) is None, so that callers count it as garbled."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AptuneError(f"{what} {path} does not exist", f"pass an existing {what}")
    kind = file_format(path)
    try:
        if kind == "parquet":
            columns, rows = _parquet(path)
        elif kind == "jsonl":
            columns, rows = _jsonl(path)
        else:
            columns, rows = _delimited(path, "\t" if kind == "tsv" else ",")
    except UnicodeDecodeError:
        raise AptuneError(f"{path} is not UTF-8 text", "pass a UTF-8 encoded text file") from None
    if not columns:
        raise AptuneError(f"{path} is empty (no header row, or no JSON object)",
                          "pass a file with a header row naming its columns, or JSON lines")
    return columns, rows


def _delimited(path: Path, delimiter: str) -> tuple[list[str], list[dict | None]]:
    # utf-8-sig: spreadsheet programs start "CSV UTF-8" files with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if "\0" in fh.read(8192):
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte: a binary file")
        fh.seek(0)
        # TSV: no quoting, as GLUE writes it (a quote is an ordinary character there).
        reader = csv.reader(fh, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = [h.strip() for h in next(reader, None) or []]
        _check_header(path, header)
        rows = [dict(zip(header, r)) if len(r) == len(header) else None for r in reader if r]
    if rows and sum(r is None for r in rows) > len(rows) / 2:
        raise AptuneError(f"most rows of {path} do not have the header's {len(header)} fields",
                          "check the delimiter (.csv: commas, .tsv: tabs) and that the header names "
                          "every column")
    return header, rows


def _check_header(path: Path, header: list[str]) -> None:
    if any(not h for h in header):
        raise AptuneError(f"{path} has a header with an unnamed column (header: {','.join(header)})",
                          "name every column in the first row (a trailing delimiter adds an empty one)")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise AptuneError(f"{path} names the column(s) {', '.join(repeated)} more than once",
                          "give every column its own name")


def _jsonl(path: Path) -> tuple[list[str], list[dict | None]]:
    """JSON lines; a `.json` file may also hold one JSON array of objects."""
    text = path.read_text(encoding="utf-8-sig")
    if "\0" in text:
        raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte: a binary file")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AptuneError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); it looks "
                              "truncated or damaged", "write the file again, or use JSON lines (one "
                              "object per line), where a bad line is skipped and counted") from None
        rows = [r if isinstance(r, dict) else None for r in data]
    else:
        rows, cut_off = [], None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row, cut_off = json.loads(line), None
            except json.JSONDecodeError:
                row, cut_off = None, number
            rows.append(row if isinstance(row, dict) else None)
        if cut_off is not None and not text.endswith("\n"):  # a last line that stops mid-object
            raise AptuneError(f"{path} ends in the middle of a JSON line (line {cut_off}): the file "
                              "looks truncated", "copy or write the file again (or delete its last "
                              "line to use the rest)")
    # The columns: every key of the first objects (a first row may lack an optional key).
    columns = list(dict.fromkeys(k for r in [r for r in rows if r is not None][:100] for k in r))
    return columns, rows


def _parquet(path: Path) -> tuple[list[str], list[dict | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise AptuneError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0][:200]})",
                          "pass a Parquet file written by pandas, pyarrow or datasets") from None
    return list(table.column_names), table.to_pylist()


def text_columns(found: list[str], text_column: str | None, pair_column: str | None, pairs: bool | None,
                 source: str, preferred: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The column(s) holding the text: the ones named, else `preferred` (a run's own columns) when
    the file has them, else the usual names. `pairs` says whether the model takes two texts
    (None: unknown)."""
    listed = ", ".join(found) or "(none)"
    if pair_column and not text_column:
        raise AptuneError("--text-pair-column needs --text-column too",
                          "name both columns of the pair")
    if text_column:
        chosen = (text_column, pair_column) if pair_column else (text_column,)
        missing = [c for c in chosen if c not in found]
        if missing:
            raise AptuneError(f"{source} has no column {', '.join(missing)} (columns: {listed})",
                              "name the columns with --text-column and --text-pair-column")
        return chosen
    if preferred and all(c in found for c in preferred):
        return preferred
    if pairs is not False:
        for pair in PAIR_COLUMNS:
            if all(c in found for c in pair):
                return pair
    if pairs is not True:
        for column in SINGLE_COLUMNS:
            if column in found:
                return (column,)
    if pairs is None:
        raise AptuneError(f"{source}: cannot tell which column holds the text (columns: {listed})",
                          "name it with --text-column (and the second text of a pair with "
                          "--text-pair-column)")
    want = "two text columns" if pairs else "a text column"
    raise AptuneError(f"{source}: cannot tell which columns hold the text (columns: {listed})",
                      f"the model takes {want}; name them with --text-column"
                      + (" and --text-pair-column" if pairs else ""))


def label_column(found: list[str], named: str | None, source: str) -> str:
    listed = ", ".join(found) or "(none)"
    if named:
        if named not in found:
            raise AptuneError(f"{source} has no label column {named!r} (columns: {listed})",
                              "name the label column with --label-column")
        return named
    for column in LABEL_COLUMNS:
        if column in found:
            return column
    raise AptuneError(f"{source}: cannot tell which column holds the label (columns: {listed})",
                      f"name it with --label-column (tried: {', '.join(LABEL_COLUMNS)})")


def text_rows(path: str | Path, columns_of: Callable[[list[str]], list[str]]
              ) -> tuple[list[list[str]], DataReport]:
    """The texts of every row of an --input file in the columns that `columns_of` picks from its
    header; empty or garbled rows are skipped and counted."""
    path = Path(path).expanduser()
    found, rows = read_table(path, "--input file")
    columns = columns_of(found)
    report, kept = DataReport(source=str(path)), []
    for row in rows:
        report.rows_read += 1
        problem = "garbled" if row is None else text_problem([row.get(c) for c in columns])
        if problem:
            report.dropped[problem] += 1
            continue
        kept.append([row[c] for c in columns])
    if not kept:
        raise AptuneError(f"{path} has no rows with text ({report.summary()})",
                          "check the file's columns and that it is not empty")
    report.rows_kept = len(kept)
    return kept, report
