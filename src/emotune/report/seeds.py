"""Seed studies and ablations: runs that differ only in ``train.seed`` are one setting; a setting's validation
metric is given as mean ± standard deviation over its seeds, against the plain setting (every robustness switch
off, when the family has one) with its training-time cost. Only validation figures: nothing here reads test."""

from __future__ import annotations

import statistics

from .collect import Entry, hyper_label, is_percent, varying
from .render import Block, Heading, Table, Text

SEED = "train.seed"


def settings(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Label -> a setting's runs (one per seed). A setting is the runs that agree on every key but the seed; its
    label is what it sets differently from the plain setting ("plain"; all of the varying keys when there is
    none)."""
    keys = [k for k in varying(entries) if k != SEED]
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        groups.setdefault(tuple(repr(e.flat.get(k)) for k in keys), []).append(e)
    # The reference: the setting with every switch off; of several (a longer plain control), the one that
    # trained the fewest steps, i.e. the budget the switches were given.
    plains = [es for es in groups.values() if all(is_plain(e) for e in es)]
    reference = min(plains, key=lambda es: sum(e.value("train", "steps") or 0 for e in es) / len(es), default=None)
    plain = reference[0] if reference else None
    out: dict[str, list[Entry]] = {}
    for es in groups.values():
        if es is reference:
            label = "plain"
        else:
            own = [k for k in keys if (plain is None or repr(es[0].flat.get(k)) != repr(plain.flat.get(k)))
                   and not _idle(es[0], k)]
            label = hyper_label(es[0], own) if own else "all runs"
        out[label] = es
    return out


def _idle(e: Entry, key: str) -> bool:
    """A key that changes nothing in this run: an empty augmentation, adversarial options without adversarial
    training (an older default of theirs must not label a plain run)."""
    return (key == "data.augment" and not e.flat.get(key)) or \
        (key.startswith("train.adversarial_") and not e.flat.get("train.adversarial"))


def is_plain(e: Entry) -> bool:
    """Every robustness switch off: no mixout, adversarial training, R-Drop, augmentation or lexicon features."""
    f = e.flat
    return not (f.get("train.mixout") or f.get("train.adversarial") or f.get("train.rdrop") or f.get("model.lexicon")
                or any(v for k, v in f.items() if k.startswith("data.augment")))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seeds_table(entries: list[Entry], metric: str) -> Table | None:
    """One row per setting (None when no setting has two seeds)."""
    groups = settings(entries)
    if not any(len({e.flat.get(SEED) for e in es}) > 1 for es in groups.values()):
        return None
    pct = is_percent(metric)
    scale = 100.0 if pct else 1.0
    plain = groups.get("plain")

    def stats(es: list[Entry]) -> tuple[float, float, float]:
        vals = [scale * e.value("validation", metric) for e in es if e.value("validation", metric) is not None]
        mean, sd = _mean_sd(vals) if vals else (float("nan"), float("nan"))
        times = [e.value("train", "runtime_s") for e in es if e.value("train", "runtime_s")]
        return mean, sd, statistics.fmean(times) if times else float("nan")

    base = stats(plain) if plain else None
    fmt = (lambda v: f"{v:.2f}") if pct else (lambda v: f"{v:.4f}")
    rows = []
    summary = {label: stats(es) for label, es in groups.items()}
    for label in sorted(groups, key=lambda k: -summary[k][0]):
        mean, sd, time = summary[label]
        row = [label, str(len(groups[label])), f"{fmt(mean)} ± {fmt(sd)}"]
        if base:
            row += [f"{mean - base[0]:+.2f}" if pct else f"{mean - base[0]:+.4f}", f"{time:.0f}",
                    f"{time / base[2]:.2f}x"]
        else:
            row += [f"{time:.0f}"]
        rows.append(row)
    columns = ["setting", "seeds", f"val {metric} (mean ± sd)"]
    columns += (["Δ vs plain", "train s (mean)", "time vs plain"] if base else ["train s (mean)"])
    return Table(columns, rows)


def seeds_section(families: dict[str, list[Entry]], metrics: dict[str, str]) -> list[Block]:
    """A table per family whose settings were run with several seeds."""
    blocks: list[Block] = []
    for fam, es in families.items():
        table = seeds_table(es, metrics[fam])
        if table is None:
            continue
        if not blocks:
            blocks.append(Heading("Seeds: mean ± standard deviation per setting", 2))
        blocks += [Text(f"{fam}: runs that differ only in `train.seed` form one setting; validation "
                        f"{metrics[fam]} over the seeds (sample standard deviation), its difference against the "
                        "plain setting (every robustness switch off) and the mean training time. Settings are "
                        "compared on validation only."), table]
    return blocks
