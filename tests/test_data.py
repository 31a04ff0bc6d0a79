import json

import pytest

from emotune.config import DataConfig
from emotune.data import load_data
from emotune.errors import DataError


def test_real_emotion_splits_and_labels(real_data):
    data = load_data(DataConfig(name="emotion", data_dir=str(real_data)))
    assert [len(data[s]) for s in ("train", "validation", "test")] == [16000, 2000, 2000]
    assert data.label_names == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    train = data["train"]
    assert train.labels.count(data.label_names.index("joy")) == 5362
    assert train.labels.count(data.label_names.index("surprise")) == 572


def test_data_dir_from_environment(real_data, monkeypatch):
    monkeypatch.setenv("EMOTUNE_DATA_DIR", str(real_data))
    data = load_data(DataConfig(name="emotion", max_train_samples=50, max_eval_samples=20))
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (50, 20, 20)


def test_sample_caps_are_seeded(toy_data):
    cfg = DataConfig(name="emotion", data_dir=str(toy_data), max_train_samples=30)
    assert load_data(cfg, seed=1)["train"].texts == load_data(cfg, seed=1)["train"].texts
    assert load_data(cfg, seed=1)["train"].texts != load_data(cfg, seed=2)["train"].texts


@pytest.mark.parametrize("content, message, line", [
    (b"i am happy;joy\n;sadness\n", "empty text", 2),
    (b"i am happy;joy\ni am blue;blue\n", "unknown label 'blue'", 2),
    (b"i am happy;joy\nno separator here\n", "no ';'", 2),
    (b"i am happy;joy\ni am \xff\xfe sad;sadness\n", "not UTF-8", 2),
])
def test_bad_emotion_lines(toy_data, content, message, line):
    path = toy_data / "emotion" / "train.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        load_data(DataConfig(name="emotion", data_dir=str(toy_data)))
    assert str(e.value).startswith(f"{path}:{line}: ")


def test_missing_split_file_is_named(toy_data):
    (toy_data / "emotion" / "test.txt").unlink()
    with pytest.raises(DataError, match="test.txt: file not found"):
        load_data(DataConfig(name="emotion", data_dir=str(toy_data)))


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        load_data(DataConfig(name="emotion", data_dir=str(tmp_path / "nope")))


def test_csv_tsv_jsonl_files(tmp_path):
    (tmp_path / "d.csv").write_text('sentence,y\n"great, really",pos\nawful,neg\nfine,pos\n'
                                    + "".join(f"ok {i},pos\n" for i in range(20)))
    data = load_data(DataConfig(name=str(tmp_path / "d.csv"), text_column="sentence", label_column="y"))
    assert data.label_names == ["neg", "pos"]
    assert len(data["train"]) + len(data["validation"]) == 23  # a validation split was carved
    assert "great, really" in data["train"].texts + data["validation"].texts

    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "train.tsv").write_text("text\tlabel\na\t0\nb\t1\nc\t2\n")
    (folder / "dev.tsv").write_text("text\tlabel\nd\t1\n")
    (folder / "test.jsonl").write_text(json.dumps({"text": "e", "label": 2}) + "\n")
    data = load_data(DataConfig(name=str(folder)))
    assert data.label_names == ["0", "1", "2"]
    assert data["validation"].labels == [1] and data["test"].labels == [2]


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", "text,label\nhello,pos\n,neg\n", "a.csv:3: empty text"),
    ("b.csv", "words,label\nhello,pos\n", "b.csv:2: no 'text' column"),
    ("c.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"\n', "c.jsonl:2: not a JSON object"),
    ("d.txt", "x\n", "unsupported file type"),
])
def test_bad_table_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_data(DataConfig(name=str(tmp_path / name)))


def test_unknown_label_in_test_split(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "test.csv").write_text("text,label\nc,z\n")
    with pytest.raises(DataError, match="test.csv:2: unknown label 'z'"):
        load_data(DataConfig(name=str(tmp_path)))


def test_unknown_data_set_name():
    with pytest.raises(DataError, match="unknown data set"):
        load_data(DataConfig(name="no-such-set"))
