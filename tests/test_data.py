import json
import os

import pandas as pd
import pytest

from floe.pipeline.data import (
    IGNORE,
    DataConfig,
    DataError,
    collate,
    load_examples,
    load_file_examples,
    load_split,
    split_and_sample,
    tokenize_example,
)


def _write(path, text):
    path.write_text(text)
    return path


def test_alpaca_jsonl_with_input_field(tmp_path):
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Greet", "input": "", "output": "Hello"}]
    f = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    ex = load_file_examples(f)
    assert ex[0]["messages"] == [{"role": "user", "content": "Add\n\n2 and 3"}]
    assert ex[0]["response"] == "5" and ex[1]["messages"][0]["content"] == "Greet"


def test_dolly_json_list_csv_and_parquet(tmp_path):
    rows = [{"instruction": f"q{i}", "context": "c" if i % 2 else "", "response": f"a{i}"}
            for i in range(4)]
    js = _write(tmp_path / "d.json", json.dumps(rows))
    csv = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    for f in (js, csv, pq):
        ex = load_file_examples(f)
        assert [e["response"] for e in ex] == ["a0", "a1", "a2", "a3"]
        assert ex[1]["messages"][0]["content"] == "q1\n\nc"


def test_chat_messages(tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ex = load_file_examples(_write(tmp_path / "c.jsonl", json.dumps(row)))
    assert ex[0]["response"] == "Hi." and [m["role"] for m in ex[0]["messages"]] == ["system", "user"]


@pytest.mark.parametrize("name,content,match", [
    ("empty.jsonl", "", "empty"),
    ("blank.json", "  \n", "empty"),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', "line 2"),
    ("bad.json", '[\n{"instruction": "a",\n "output": "b"},\n{oops}\n]', "line 4"),
    ("fields.jsonl", '{"question2": "a", "text": "b"}\n', "missing fields.*question2, text"),
    ("notobj.jsonl", '[1, 2]\n', "not a JSON object"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', "assistant"),
    ("data.txt", "hello", "unsupported file type"),
])
def test_bad_files_get_a_clear_error_naming_the_file(tmp_path, name, content, match):
    f = _write(tmp_path / name, content)
    with pytest.raises(DataError, match=match) as e:
        load_file_examples(f)
    assert name in str(e.value)


def test_not_utf8(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes('{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*byte 20"):
        load_file_examples(f)


def test_missing_file_and_unknown_set(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_file_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown data 'wikipedia'.*general"):
        load_examples("wikipedia")


def test_fewer_examples_than_asked(tmp_path):
    f = _write(tmp_path / "small.jsonl", "\n".join(json.dumps({"prompt": str(i), "completion": "x"})
                                                   for i in range(5)))
    cfg = DataConfig(data=str(f), max_samples=8, val_samples=2)
    with pytest.raises(DataError, match="5 examples, fewer than the 8 training \\+ 2 validation"):
        split_and_sample(load_file_examples(f), cfg)


def test_load_split_reads_an_edited_file_again(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = lambda tag: "\n".join(json.dumps({"prompt": f"{tag}{i}", "completion": "x"})  # noqa: E731
                                  for i in range(6))
    f.write_text(rows("a"))
    cfg = DataConfig(data=str(f), max_samples=4, val_samples=2)
    first = load_split(cfg)
    assert load_split(cfg) == first  # memoised, same split
    f.write_text(rows("b"))
    os.utime(f, ns=(f.stat().st_mtime_ns + 10**9,) * 2)  # a later mtime, as an edit gives
    assert all(m["content"].startswith("b") for e in load_split(cfg).train for m in e["messages"])


def test_sampling_is_deterministic_nested_and_keeps_validation_apart():
    examples = [{"messages": [{"role": "user", "content": str(i)}], "response": str(i)}
                for i in range(100)]
    full = split_and_sample(examples, DataConfig(max_samples=50, val_samples=10, ratio=1.0))
    again = split_and_sample(examples, DataConfig(max_samples=50, val_samples=10, ratio=1.0))
    part = split_and_sample(examples, DataConfig(max_samples=50, val_samples=10, ratio=0.3))
    other = split_and_sample(examples, DataConfig(max_samples=50, val_samples=10, seed=7))
    key = lambda s: [e["response"] for e in s]  # noqa: E731
    assert key(full.train) == key(again.train) and len(part.train) == 15
    assert key(part.train) == key(full.train)[:15] and key(part.val) == key(full.val)
    assert not set(key(full.train)) & set(key(full.val))
    assert key(other.train) != key(full.train)
    with pytest.raises(ValueError, match="ratio"):
        DataConfig(ratio=0.0)
    with pytest.raises(ValueError, match="ratio"):
        DataConfig(ratio=1.5)


def test_loss_only_on_response_tokens_with_chat_template(smol_tokenizer):
    ex = {"messages": [{"role": "user", "content": "What is two plus two?"}], "response": "Four."}
    row = tokenize_example(smol_tokenizer, ex, 128)
    labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
    assert smol_tokenizer.decode(labelled) == "Four.<|im_end|>"
    prompt_text = smol_tokenizer.decode(row["input_ids"][:len(row["input_ids"]) - len(labelled)])
    assert "<|im_start|>assistant" in prompt_text and "two plus two" in prompt_text


def test_truncation_keeps_response_tokens(smol_tokenizer):
    ex = {"messages": [{"role": "user", "content": "word " * 500}], "response": "The answer."}
    row = tokenize_example(smol_tokenizer, ex, 64)
    assert len(row["input_ids"]) == 64 and sum(label != IGNORE for label in row["labels"]) >= 3


def test_plain_format_for_base_models(smol_tokenizer):
    import copy
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    row = tokenize_example(tok, {"messages": [{"role": "user", "content": "Q"}], "response": "A"}, 64)
    assert tok.decode(row["input_ids"]).startswith("### Instruction:\nQ")


def test_collate_pads_right_and_masks():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                     {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


@pytest.mark.parametrize("name", ["general", "medical", "legal", "math", "code"])
def test_embedded_sets_are_real_and_exclude_evaluation_sources(name):
    ex = load_examples(name)
    assert len(ex) >= 150
    assert all(e["response"] and e["messages"][0]["content"] for e in ex)
    sources = {e["source"] for e in ex}
    assert not any(s.startswith(("arc", "piqa", "hellaswag", "winogrande", "mmlu_test")) for s in sources)
