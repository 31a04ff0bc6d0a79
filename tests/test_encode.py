import torch

from emotune.data.encode import batches, collate


def test_batches_cover_every_index_once_and_group_lengths():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    gen = torch.Generator().manual_seed(0)
    grouped = batches(lengths, 16, shuffle=True, generator=gen)
    flat = sorted(i for b in grouped for i in b)
    assert flat == list(range(1000))
    plain = batches(lengths, 16, shuffle=True, generator=torch.Generator().manual_seed(0), group_by_length=False)
    padded = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert padded(grouped) < 0.7 * padded(plain)


def test_batches_are_reproducible_and_differ_by_seed():
    lengths = list(range(1, 200))
    a = batches(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(1))
    b = batches(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(1))
    c = batches(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(2))
    assert a == b and a != c


def test_collate_pads_to_longest():
    b = collate([[5, 6, 7], [8]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
