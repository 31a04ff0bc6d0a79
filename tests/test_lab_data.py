"""The lab data sets (MR, SemEval-2017 4A), cross-validation folds, validation carving and F1-PN."""

from collections import Counter
from pathlib import Path

import pytest

from emotune.config import DataConfig, RunConfig
from emotune.data import load_data
from emotune.errors import ConfigError, DataError
from emotune.tasks import CLASSIFICATION, classification_metrics

MR_PER_CLASS = 5010  # the lab split takes the first 5,000 of each class: 10 per class are left for test


def write_mr(root: Path, n: int = MR_PER_CLASS) -> Path:
    folder = root / "mr"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("pos", "neg"):
        (folder / f"rt-polarity.{suffix}").write_text("".join(f"{suffix} sentence {i} .\n" for i in range(n)),
                                                      encoding="utf-8")
    return root


def write_semeval(root: Path, train: dict[str, str], dev: dict[str, str]) -> Path:
    for split, files in (("train", train), ("dev", dev)):
        folder = root / "semeval2017a" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_text(content, encoding="utf-8")
    return root


def tweets(start: int, n: int, tail: str = "") -> str:
    labels = ["negative", "neutral", "positive"]
    return "".join(f"{i}\t{labels[i % 3]}\ttweet number {i}{tail}\n" for i in range(start, start + n))


@pytest.fixture()
def semeval(tmp_path) -> Path:
    return write_semeval(tmp_path, {"b.tsv": tweets(0, 30), "a.tsv": tweets(100, 6, tail="\t")},
                         {"dev.tsv": tweets(200, 9)})


# ---- MR ---------------------------------------------------------------------------------------------

def test_mr_lab_split_takes_the_first_sentences_of_each_class(tmp_path):
    data = load_data(DataConfig(name="mr", data_dir=str(write_mr(tmp_path))), seed=0)
    assert data.label_names == ["negative", "positive"]
    train, val, test = data["train"], data["validation"], data["test"]
    assert (len(train) + len(val), len(test)) == (10000, 20)
    assert len(val) == 1000  # the default validation_fraction 0.1, carved from train
    assert test.texts == [f"pos sentence {i} ." for i in range(5000, 5010)] + \
        [f"neg sentence {i} ." for i in range(5000, 5010)]
    assert test.labels == [1] * 10 + [0] * 10
    held = set(train.texts) | set(val.texts)
    assert held == {f"{s} sentence {i} ." for s in ("pos", "neg") for i in range(5000)}
    assert all(t.startswith("pos") == (y == 1) for t, y in zip(train.texts + val.texts, train.labels + val.labels))


def test_mr_needs_a_data_dir_and_enough_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("EMOTUNE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        load_data(DataConfig(name="mr"))
    write_mr(tmp_path, n=5000)
    with pytest.raises(DataError, match="rt-polarity.pos: 5000 sentences"):
        load_data(DataConfig(name="mr", data_dir=str(tmp_path)))


def test_validation_fraction(tmp_path):
    root = write_mr(tmp_path)
    data = load_data(DataConfig(name="mr", data_dir=str(root), validation_fraction=0.25), seed=3)
    assert (len(data["train"]), len(data["validation"])) == (7500, 2500)
    assert not set(data["train"].texts) & set(data["validation"].texts)
    again = load_data(DataConfig(name="mr", data_dir=str(root), validation_fraction=0.25), seed=3)
    assert again["validation"].texts == data["validation"].texts
    other = load_data(DataConfig(name="mr", data_dir=str(root), validation_fraction=0.25), seed=4)
    assert other["validation"].texts != data["validation"].texts
    pinned = load_data(DataConfig(name="mr", data_dir=str(root), validation_fraction=0.25, seed=3), seed=4)
    assert pinned["validation"].texts == data["validation"].texts  # data.seed wins over the run's seed
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match="validation_fraction"):
            DataConfig(validation_fraction=bad)


# ---- cross-validation --------------------------------------------------------------------------------

def test_cv_folds_partition_the_pooled_data_stratified(tmp_path):
    root = write_mr(tmp_path)
    folds = [load_data(DataConfig(name="mr", data_dir=str(root), cv_folds=10, cv_fold=k), seed=7)
             for k in range(10)]
    everything = {f"{s} sentence {i} ." for s in ("pos", "neg") for i in range(MR_PER_CLASS)}
    tests = [set(d["test"].texts) for d in folds]
    assert set().union(*tests) == everything
    assert sum(len(t) for t in tests) == len(everything)  # disjoint
    for d, test in zip(folds, tests):
        assert Counter(d["test"].labels) == {0: 501, 1: 501}  # stratified: half of each fold per class
        rest = set(d["train"].texts) | set(d["validation"].texts)
        assert not rest & test and rest | test == everything
        assert len(d["validation"]) == round(0.1 * len(rest))  # validation carved from the fold's train
    assert folds[0]["test"].texts == load_data(DataConfig(name="mr", data_dir=str(root), cv_folds=10, cv_fold=0),
                                               seed=7)["test"].texts


def test_cv_keeps_a_data_sets_own_validation_split(semeval, tmp_path):
    gold = tmp_path / "gold.tsv"
    gold.write_text(tweets(300, 12), encoding="utf-8")
    data = load_data(DataConfig(name="semeval2017a", data_dir=str(semeval), test_files=[str(gold)],
                                cv_folds=4, cv_fold=1))
    assert data["validation"].texts == [f"tweet number {i}" for i in range(200, 209)]
    assert (len(data["train"]), len(data["test"])) == (36, 12)  # (30 + 6 + 12 pooled) / 4 folds
    assert Counter(data["test"].labels) == {0: 4, 1: 4, 2: 4}
    assert any(t.startswith("tweet number 3") for t in data["train"].texts)  # gold tweets pooled into train


@pytest.mark.parametrize("options, message", [
    ({"cv_folds": 10}, "needs both"), ({"cv_fold": 0}, "needs both"), ({"cv_folds": 1, "cv_fold": 0}, "at least 2"),
    ({"cv_folds": 10, "cv_fold": 10}, r"0\.\.9"), ({"cv_folds": 10, "cv_fold": -1}, r"0\.\.9"),
])
def test_cv_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**options)


def test_cv_fold_grid_axis_via_override():
    cfg = RunConfig().override(["data.cv_folds=10", "data.cv_fold=9"])
    assert (cfg.data.cv_folds, cfg.data.cv_fold) == (10, 9)
    with pytest.raises(ConfigError, match="cv_fold"):
        RunConfig().override(["data.cv_folds=10", "data.cv_fold=10"])


def test_cv_needs_enough_examples_per_label(tmp_path):
    with pytest.raises(DataError, match="at least 10 examples of every label"):
        load_data(DataConfig(name="semeval2017a", data_dir=str(write_semeval(tmp_path, {"t.tsv": tweets(0, 12)},
                                                                                 {"d.tsv": tweets(50, 3)})),
                             cv_folds=10, cv_fold=0))


# ---- SemEval-2017 4A ---------------------------------------------------------------------------------

def test_semeval_files_sorted_deduplicated_and_dev_validates(semeval):
    data = load_data(DataConfig(name="semeval2017a", data_dir=str(semeval)))
    assert data.label_names == ["negative", "neutral", "positive"]
    assert "test" not in data.splits
    # a.tsv (trailing tabs) sorts before b.tsv
    assert data["train"].texts == [f"tweet number {i}" for i in [*range(100, 106), *range(30)]]
    assert data["train"].labels == [i % 3 for i in [*range(100, 106), *range(30)]]
    assert data["validation"].texts == [f"tweet number {i}" for i in range(200, 209)]


def test_semeval_first_occurrence_wins_and_held_out_tweets_leave_train(tmp_path):
    root = write_semeval(tmp_path, {
        "a.tsv": "1\tpositive\tfirst copy\n2\tneutral\tkept\n1\tnegative\tsame file again\n3\tneutral\tin dev\n",
        "b.tsv": "1\tnegative\tlater file\n4\tnegative\tin gold\n",
    }, {"d.tsv": "3\tpositive\tdev copy\n5\tneutral\tdev only\n5\tneutral\tdev again\n"})
    gold = tmp_path / "gold.tsv"
    gold.write_text("4\tpositive\tgold copy\n", encoding="utf-8")
    data = load_data(DataConfig(name="semeval2017a", data_dir=str(root), test_files=[str(gold)],
                                validation_fraction=0.5))
    assert list(zip(data["train"].texts, data["train"].labels)) == [("first copy", 2), ("kept", 1)]
    assert data["validation"].texts == ["dev copy", "dev only"]
    assert list(zip(data["test"].texts, data["test"].labels)) == [("gold copy", 2)]


def test_semeval_escapes_quotes_and_entities_decoded(tmp_path):
    lines = [
        "1\tpositive\tI\\u2019m going to Chapel Hill\\u002c Sat :)",
        '2\tneutral\t"It read: \\""Chelsea - Standing up\\"""',
        '3\tnegative\t"a ""quoted"" word, and a comma"\t',
        "4\tpositive\temoji \\ud83d\\ude00 here &amp; there &amp;amp; again",
        '5\tneutral\t"a quote" and "another"',
        "6\tneutral\ttab\tinside",
    ]
    root = write_semeval(tmp_path, {"t.tsv": "\n".join(lines) + "\n\n"}, {"d.tsv": tweets(50, 3)})
    assert load_data(DataConfig(name="semeval2017a", data_dir=str(root)))["train"].texts == [
        "I’m going to Chapel Hill, Sat :)",
        'It read: "Chelsea - Standing up"',
        'a "quoted" word, and a comma',
        "emoji \U0001F600 here & there & again",
        '"a quote" and "another"',
        "tab inside",
    ]


@pytest.mark.parametrize("line, message", [
    ("7\tpositive", "expected id<TAB>label<TAB>text"),
    ("7\tgreat\tsome text", "unknown label 'great'"),
    ("7\tpositive\t   ", "empty text"),
    ("\tpositive\tsome text", "empty tweet id"),
])
def test_semeval_bad_line_names_file_and_line(tmp_path, line, message):
    root = write_semeval(tmp_path, {"t.tsv": tweets(0, 3) + "\n" + line + "\n"}, {"d.tsv": tweets(9, 3)})
    with pytest.raises(DataError, match=message) as e:
        load_data(DataConfig(name="semeval2017a", data_dir=str(root)))
    assert str(e.value).startswith(f"{root / 'semeval2017a' / 'train' / 't.tsv'}:5: ")


def test_semeval_test_files_relative_to_cwd_and_missing(semeval, tmp_path, monkeypatch):
    (tmp_path / "gold").mkdir()
    (tmp_path / "gold" / "g.tsv").write_text(tweets(500, 4), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig().override([f"data.data_dir={semeval}", "data.name=semeval2017a", "data.test_files=gold/g.tsv"])
    assert cfg.data.test_files == [str(tmp_path / "gold" / "g.tsv")]  # absolute: evaluate works from anywhere
    assert load_data(cfg.data)["test"].texts == [f"tweet number {i}" for i in range(500, 504)]
    with pytest.raises(DataError, match="nope.tsv: file not found"):
        load_data(DataConfig(name="semeval2017a", data_dir=str(semeval), test_files=["nope.tsv"]))


# ---- metrics -----------------------------------------------------------------------------------------

def test_f1_pn_on_a_hand_example():
    names = ["negative", "neutral", "positive"]
    y_true = [0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 2, 0, 1]
    m = classification_metrics(y_true, y_pred, names)
    # negative: P 1/2, R 1/2 -> F1 1/2; positive: P 1, R 1/2 -> F1 2/3; F1-PN = 7/12
    assert m["f1_pn"] == pytest.approx(7 / 12)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # AvgRec
    assert "f1_pn" not in classification_metrics([0, 1], [0, 1], ["sadness", "joy"])


def test_f1_pn_metric_check():
    CLASSIFICATION.check_metric("f1_pn", ["negative", "positive"])
    with pytest.raises(ConfigError, match="positive and negative"):
        CLASSIFICATION.check_metric("f1_pn", ["sadness", "joy"])
    with pytest.raises(ConfigError, match="unknown validation metric"):
        CLASSIFICATION.check_metric("avgrec", ["negative", "positive"])


def test_metric_tables_show_avgrec_and_f1_pn_only_when_present(capsys):
    from emotune.cli import print_metrics
    from emotune.report.collect import Entry
    from emotune.report.tables import validation_table

    sentiment = classification_metrics([0, 1, 2], [0, 1, 1], ["negative", "neutral", "positive"])
    emotion = classification_metrics([0, 1], [0, 1], ["sadness", "joy"])
    print_metrics({"validation": sentiment}, "s")
    shown = capsys.readouterr().out
    assert "F1-PN" in shown and "AvgRec" in shown
    print_metrics({"validation": emotion}, "e")
    shown = capsys.readouterr().out
    assert "F1-PN" not in shown and "AvgRec" not in shown and "recall (macro)" in shown

    def rows(metrics):
        e = Entry(run=None, name="r", metrics={"validation": metrics, "train": {}})
        return [r[0] for r in validation_table([e], [], e).rows]

    assert {"recall (macro) = AvgRec (%)", "F1-PN (%)"} <= set(rows(sentiment))
    assert not {"recall (macro) = AvgRec (%)", "F1-PN (%)"} & set(rows(emotion))


def test_datasets_command_lists_the_lab_data_sets():
    from typer.testing import CliRunner

    from emotune.cli import app

    r = CliRunner().invoke(app, ["datasets"])
    assert r.exit_code == 0 and "mr" in r.stdout and "semeval2017a" in r.stdout and "Pang & Lee" in r.stdout


# ---- the real files ------------------------------------------------------------------------------------

def test_real_mr_and_semeval(real_data):
    mr = load_data(DataConfig(name="mr", data_dir=str(real_data)))
    assert (len(mr["train"]) + len(mr["validation"]), len(mr["test"])) == (10000, 662)
    assert Counter(mr["test"].labels) == {0: 331, 1: 331}
    sem = load_data(DataConfig(name="semeval2017a", data_dir=str(real_data)))
    # train/: 46,335 lines, 45,624 distinct ids, 44 of them also in dev/ (dropped from train);
    # dev/: 3,999 lines, 3,990 distinct ids. The lab's "about 49,570" is train and dev pooled.
    assert (len(sem["train"]), len(sem["validation"])) == (45580, 3990)
    assert len(sem["train"]) + len(sem["validation"]) == 49570
    assert Counter(sem["validation"].labels) == {0: 713, 1: 1446, 2: 1831}
    assert not any("\\u" in t or "&amp;" in t for t in sem["train"].texts)
