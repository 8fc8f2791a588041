"""User data files: JSON, JSON Lines, CSV and Parquet of instruction pairs or chat messages,
read without ``datasets`` (its Arrow copies of a user's file would stay in the shared home
cache), checked row by row with errors that name the file, the row and the field, and
fingerprinted by content for run keys."""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import warnings
from pathlib import Path

__all__ = ["ALPACA_INPUT", "ALPACA_PROMPT", "ALPACA_RESPONSE", "CSV_FIELD_LIMIT", "FILE_TYPES",
           "DataError", "DataWarning", "data_file", "example", "file_fingerprint", "load_file_examples"]


class DataError(ValueError):
    """A data file or set that cannot be used; the message names the file and the problem."""


def example(prompt: str, response: str, source: str) -> dict:
    """One training example: the prompt as a user turn, the response, where it came from."""
    return {"messages": [{"role": "user", "content": prompt.strip()}],
            "response": str(response).strip(), "source": source}


ALPACA_PROMPT = ("instruction", "prompt", "question")
ALPACA_INPUT = ("input", "context")
ALPACA_RESPONSE = ("output", "response", "completion", "answer")
FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


CSV_FIELD_LIMIT = 16 * 2 ** 20  # characters; a larger CSV field is refused with a clear error


class DataWarning(UserWarning):
    """A data file is usable, but something in it was converted or looks wrong."""


def _check_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the data
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                        "save it as UTF-8") from None
    if "\x00" in text:
        raise DataError(f"{path}: holds NUL bytes: a binary file, not text")
    return text


def _loads(path: Path, text: str, where: str | None = None):
    """json.loads with errors as DataError, located at ``where`` (default: the error's line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: bad JSON on {where or f'line {e.lineno}'}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply" + (f" on {where}" if where else "")) from None


def _json_object(path: Path, text: str, where: str) -> dict:
    row = _loads(path, text, where)
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where} is not a JSON object")
    return row


def _json_rows(path: Path, text: str) -> list[dict]:
    """Rows of a JSON Lines file, a JSON list of objects, or one object (a row, or columns
    of equal length); syntax errors located by line, which ``datasets`` reports obscurely."""
    if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
        if path.suffix.lower() == ".json" and text.lstrip().startswith("{") and "\n{" not in text.strip():
            row = _json_object(path, text, "line 1")
            columns = list(row.values())
            if columns and all(isinstance(c, list) for c in columns) and len({len(c) for c in columns}) == 1:
                return [dict(zip(row, values)) for values in zip(*columns)]
            return [row]
        return [_json_object(path, line, f"line {n}") for n, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    rows = _loads(path, text)
    bad = next((n for n, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad:
        raise DataError(f"{path}: item {bad} of the JSON list is not an object")
    return rows


def _csv_rows(path: Path, text: str) -> list[dict]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return [{k: v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _read_rows(path: Path, kind: str) -> list[dict]:
    """The file's rows as dicts, read here without ``datasets`` (which would leave Arrow
    copies of the user's data in the shared home cache)."""
    if kind == "parquet":
        return _parquet_rows(path)
    text = _check_text_file(path)
    return _json_rows(path, text) if kind == "json" else _csv_rows(path, text)


def _text(row: dict, keys: tuple[str, ...], where: str, converted: set) -> str | None:
    """The first non-empty field of ``keys`` as text; numbers become text (noted in
    ``converted``), lists and objects are an error."""
    for key in keys:
        value = row.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            converted.add(f"{key} ({type(value).__name__})")
            return str(value)
        raise DataError(f"{where}: field {key!r} is a {type(value).__name__}, not text")
    return None


def _messages_example(messages, where: str, source: str) -> dict:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: 'messages' must be a list of {{\"role\": ..., \"content\": ...}} "
                        f"turns, not a {type(messages).__name__}")
    bad = next((i for i, m in enumerate(messages, 1)
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str)), None)
    if bad:
        raise DataError(f"{where}: turn {bad} of 'messages' needs a text 'role' and 'content'")
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'messages' must end with an assistant turn")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
            "response": messages[-1]["content"], "source": source}


def _row_to_example(row: dict, path: Path, n: int, converted: set) -> dict | None:
    where = f"{path}: row {n}"
    if row.get("messages") is not None:
        return _messages_example(row["messages"], where, path.name)
    prompt = _text(row, ALPACA_PROMPT, where, converted)
    response = _text(row, ALPACA_RESPONSE, where, converted)
    if prompt is None or response is None:
        return None
    extra = _text(row, ALPACA_INPUT, where, converted) or ""
    return example(f"{prompt}\n\n{extra}" if extra else prompt, response, path.name)


def data_file(data: str | Path) -> Path:
    """The resolved path of a data file, or DataError saying why it cannot be one."""
    path = Path(data).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a directory; --data takes a .json/.jsonl/.csv/.parquet file "
                        "or the name of an embedded set")
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file")
    if FILE_TYPES.get(path.suffix.lower()) is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use "
                        f"{', '.join(FILE_TYPES)}")
    return path.resolve()


def _missing_fields(path: Path, kind: str, columns: set) -> str:
    message = (f"{path}: missing fields: need 'messages', or one of {ALPACA_PROMPT} and one of "
               f"{ALPACA_RESPONSE} (found: {', '.join(sorted(map(str, columns)))})")
    if kind == "csv" and any(";" in str(c) for c in columns):
        message += "; the header holds ';': the file looks ';'-separated, save it comma-separated"
    return message


def load_file_examples(path: str | Path) -> list[dict]:
    """Read an Alpaca/Dolly-style or chat-messages file."""
    path = data_file(path)
    kind = FILE_TYPES[path.suffix.lower()]
    rows = _read_rows(path, kind)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = set().union(*(row.keys() for row in rows))
    if "messages" not in columns and not (columns & set(ALPACA_PROMPT) and columns & set(ALPACA_RESPONSE)):
        raise DataError(_missing_fields(path, kind, columns))
    converted: set[str] = set()
    examples = [ex for n, row in enumerate(rows, 1) if (ex := _row_to_example(row, path, n, converted))]
    if not examples:
        raise DataError(f"{path}: every row has an empty prompt or response")
    if converted:
        warnings.warn(f"{path}: non-text values in {', '.join(sorted(converted))} were converted "
                      "to text", DataWarning, stacklevel=2)
    return examples


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: Path) -> dict:
    """What identifies a data file's content in run keys: size and sha256."""
    stat = path.stat()
    return {"size": stat.st_size, "sha256": _sha256(str(path), stat.st_size, stat.st_mtime_ns)}
