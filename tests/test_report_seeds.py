"""The report's seed table: runs differing only in train.seed form a setting, given as mean ± sd against the plain
setting, with the training-time cost."""

from __future__ import annotations

import statistics

from emotune.report.collect import Entry
from emotune.report.seeds import is_plain, seeds_table


def _entry(name: str, seed: int, acc: float, runtime: float, steps: int = 100, **switches) -> Entry:
    flat = {"train.seed": seed, "train.mixout": 0.0, "train.rdrop": 0.0, "train.adversarial": None,
            "data.augment": {}, "model.lexicon": None, "train.max_epochs": 5, **switches}
    return Entry(None, name, "full", {"validation": {"accuracy": acc}, "train": {"runtime_s": runtime, "steps": steps}},
                 flat=flat)


def test_seed_table_gives_mean_sd_delta_and_time_against_plain():
    entries = [_entry(f"plain/{s}", s, a, 100.0) for s, a in ((1, 0.80), (2, 0.82), (3, 0.84))]
    entries += [_entry(f"rdrop/{s}", s, a, 210.0, **{"train.rdrop": 1.0}) for s, a in ((1, 0.83), (2, 0.85),
                                                                                          (3, 0.84))]
    entries += [_entry(f"eda/{s}", s, a, 300.0, **{"data.augment.copies": 2, "data.augment.swap": 0.1})
                for s, a in ((1, 0.79), (2, 0.80), (3, 0.81))]
    # A longer plain control (more steps) is a setting of its own; the reference is the shorter plain run.
    entries += [_entry(f"long/{s}", s, 0.83, 300.0, steps=300, **{"train.max_epochs": 15,
                                                                 "train.adversarial_eps": 0.3}) for s in (1, 2, 3)]
    assert is_plain(entries[0]) and not is_plain(entries[3]) and not is_plain(entries[6]) and is_plain(entries[9])
    table = seeds_table(entries, "accuracy")
    assert table.columns == ["setting", "seeds", "val accuracy (mean ± sd)", "Δ vs plain", "train s (mean)",
                             "time vs plain"]
    rows = {r[0]: r for r in table.rows}
    assert set(rows) == {"plain", "rdrop=1", "copies=2, swap=0.1", "epochs=15"}  # what each sets beside plain
    assert rows["epochs=15"][3:] == ["+1.00", "300", "3.00x"]
    rdrop = rows["rdrop=1"]
    sd = 100 * statistics.stdev([0.83, 0.85, 0.84])
    assert rdrop[1:] == ["3", f"84.00 ± {sd:.2f}", "+2.00", "210", "2.10x"]
    plain = rows["plain"]
    assert plain[2] == "82.00 ± 2.00" and plain[3] == "+0.00"
    assert table.rows[0] is rdrop  # best mean first (84.00, then the long control's 83.00)
    eda = rows["copies=2, swap=0.1"]
    assert eda[3] == "-2.00" and eda[5] == "3.00x"


def test_no_table_without_several_seeds():
    assert seeds_table([_entry("a", 1, 0.8, 10.0), _entry("b", 1, 0.7, 10.0, **{"train.rdrop": 1.0})],
                       "accuracy") is None
