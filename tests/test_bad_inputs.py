"""The bad-input corpus (tests/data/bad/ and cases made here: directories, symlinks, a FIFO,
huge fields) through the CLI and the app's upload path: exit code 2 or a visible error,
one line, no traceback, nothing left in the cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from floe.app import pickers
from floe.cli import main
from floe.pipeline import datafiles

CORPUS = Path(__file__).resolve().parent / "data" / "bad"
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != "README.md")
MADE = ["directory", "symlink-to-directory", "broken-symlink", "symlink-loop", "fifo",
        "huge-csv-field", "huge-jsonl-line", "missing"]


def made(name: str, folder: Path, monkeypatch) -> Path:
    """A bad input that cannot live in git (or would be huge there)."""
    path = folder / name
    if name == "directory":
        (folder / "data.jsonl").mkdir()
        return folder / "data.jsonl"
    if name == "symlink-to-directory":
        (folder / "d").mkdir()
        path = folder / "link.jsonl"
        path.symlink_to(folder / "d")
    elif name == "broken-symlink":
        path = folder / "gone.jsonl"
        path.symlink_to(folder / "nothing-here.jsonl")
    elif name == "symlink-loop":
        path = folder / "loop.jsonl"
        path.symlink_to(path)
    elif name == "fifo":
        path = folder / "pipe.jsonl"
        os.mkfifo(path)
    elif name == "huge-csv-field":
        monkeypatch.setattr(datafiles, "CSV_FIELD_LIMIT", 10_000)
        path = folder / "huge.csv"
        path.write_text("instruction,output\n" + "q," + "a" * 20_000 + "\n")
    elif name == "huge-jsonl-line":
        path = folder / "huge.jsonl"
        path.write_text('{"text": "' + "x" * 5_000_000 + '"}\n')
    elif name == "missing":
        path = folder / "not-there.csv"
    return path


def assert_clean_failure(code: int, err: str, cache: Path) -> str:
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 2 and len(errors) == 1, err
    assert "fewer than" not in errors[0]  # refused for what the file is, not for its size
    assert not any((cache / "runs").iterdir()) if (cache / "runs").exists() else True
    assert not (cache / "uploads").exists() or not any((cache / "uploads").iterdir())
    return errors[0]


@pytest.mark.parametrize("name", FILES + MADE)
def test_the_cli_refuses_bad_data_in_one_line(name, cache, capsys, tiny_args, tmp_path, monkeypatch):
    path = CORPUS / name if name in FILES else made(name, tmp_path, monkeypatch)
    args = [*tiny_args]
    args[args.index("--data") + 1] = str(path)
    code = main(["warmup", *args])
    assert_clean_failure(code, capsys.readouterr().err, cache)


@pytest.mark.parametrize("name", FILES)
def test_the_upload_path_refuses_bad_data_and_keeps_nothing(name, cache):
    data = (CORPUS / name).read_bytes()
    with pytest.raises(ValueError) as error:
        pickers.save_upload(name, data)
    assert "\n" not in str(error.value).strip() or "JSON" in str(error.value)
    assert not (cache / "uploads").exists() or not any((cache / "uploads").iterdir())


def test_an_oversized_upload_is_refused(cache, monkeypatch):
    monkeypatch.setattr(pickers, "MAX_UPLOAD_MB", 1)
    with pytest.raises(ValueError, match="the limit is 1 MB"):
        pickers.save_upload("big.jsonl", b'{"instruction": "q", "output": "' + b"a" * 2 ** 21 + b'"}')
    assert not (cache / "uploads").exists()


@pytest.mark.parametrize("name", ["messages_as_string.jsonl", "csv_semicolon.csv", "parquet_truncated.parquet",
                                  "latin1.jsonl", "directory"])
def test_the_app_shows_the_error_of_a_bad_local_file(name, cache, tmp_path, monkeypatch):
    path = CORPUS / name if name in FILES else made(name, tmp_path, monkeypatch)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.run()
    at.radio[1].set_value("local file").run()
    at.text_input[0].input(str(path)).run()
    assert not at.exception
    assert len(at.error) == 1 and path.name in at.error[0].value.replace("\\", "")  # markdown-escaped
    assert next(b for b in at.button if b.label == "Start analysis").disabled
