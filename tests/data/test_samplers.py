"""ResumableSampler: the order is a function of (seed, epoch); shards are disjoint; resume skips exactly
what was trained on, once."""
import pytest

from textdiff.data.samplers import ResumableSampler

DATA = list(range(23))


def test_order_is_a_function_of_seed_and_epoch():
    a, b = ResumableSampler(DATA, seed=3), ResumableSampler(DATA, seed=3)
    first = list(a)
    assert first == list(b) and sorted(first) == DATA and first != DATA
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == DATA
    assert list(ResumableSampler(DATA, seed=4)) != first


def test_two_ranks_see_disjoint_shards_that_cover_the_data():
    r0 = list(ResumableSampler(DATA, seed=0, num_replicas=2, rank=0))
    r1 = list(ResumableSampler(DATA, seed=0, num_replicas=2, rank=1))
    assert len(r0) == len(r1) == 12  # ceil(23 / 2); one index repeated to even the shards
    assert set(r0) | set(r1) == set(DATA)
    assert len(set(r0) & set(r1)) == 1  # only the padding repeat is shared


def test_resume_skips_the_done_examples_of_that_epoch_once():
    full = ResumableSampler(DATA, seed=0)
    full.set_epoch(2)
    expected = list(full)
    s = ResumableSampler(DATA, seed=0)
    s.resume(epoch=2, examples_done=8)
    assert s.epoch == 2  # set before Lightning's own set_epoch: its first iterator comes earlier
    assert list(s) == expected[8:]
    assert list(s) == expected  # the skip applied once
    s.resume(epoch=2, examples_done=5)
    s.set_epoch(3)  # the resumed epoch is over: later epochs start at their beginning
    assert sorted(s) == DATA
    with pytest.raises(ValueError, match="examples_done"):
        s.resume(epoch=0, examples_done=-1)
