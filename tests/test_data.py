"""The book's minibatch iterators: offsets, coverage, shapes and the continuity property."""
import numpy as np
import pytest

from fastseq import SeqDataLoader, seq_data_iter_random, seq_data_iter_sequential
from fastseq.errors import ArgumentError

CORPUS = np.arange(1000, dtype=np.int32)  # ids equal positions: every check reads offsets directly


@pytest.mark.parametrize("it", [seq_data_iter_random, seq_data_iter_sequential])
def test_shapes_and_targets_are_next_tokens(it):
    batches = list(it(CORPUS, 4, 7, np.random.default_rng(0)))
    assert batches
    for X, Y in batches:
        assert X.shape == Y.shape == (4, 7) and X.dtype == Y.dtype == np.int32
        assert np.array_equal(Y, X + 1)
        assert np.all(np.diff(X, axis=1) == 1)  # each row is a contiguous run of the text


def test_random_sampling_covers_disjoint_subsequences_from_one_offset():
    B, T = 5, 6
    starts = np.concatenate([X[:, 0] for X, _ in seq_data_iter_random(CORPUS, B, T, np.random.default_rng(3))])
    offset = starts.min() % T
    assert 0 <= offset < T
    assert np.all((starts - offset) % T == 0)          # all on the same grid
    assert len(set(starts.tolist())) == len(starts)     # no subsequence twice
    n_sub = (len(CORPUS) - offset - 1) // T
    assert len(starts) == (n_sub // B) * B              # every full batch of subsequences is used
    assert not np.array_equal(starts, np.sort(starts))  # in random order


def test_sequential_rows_continue_across_batches():
    B, T = 4, 5
    batches = list(seq_data_iter_sequential(CORPUS, B, T, np.random.default_rng(1)))
    for (X0, _), (X1, _) in zip(batches, batches[1:]):
        assert np.array_equal(X1[:, 0], X0[:, -1] + 1)  # row i of batch k+1 continues row i of batch k
    offset = batches[0][0][0, 0]
    assert 0 <= offset <= T
    stream = (len(CORPUS) - offset - 1) // B
    assert np.array_equal(batches[0][0][:, 0], offset + stream * np.arange(B))


def test_seeded_reproducibility_and_fresh_offsets_per_epoch():
    a = SeqDataLoader(CORPUS, 4, 5, "random", seed=7)
    b = SeqDataLoader(CORPUS, 4, 5, "random", seed=7)
    ea, eb = [x for x, _ in a], [x for x, _ in b]
    assert all(np.array_equal(x, y) for x, y in zip(ea, eb))
    firsts = {int(next(iter(a))[0][0, 0]) for _ in range(10)}
    assert len(firsts) > 1  # each epoch draws again


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_len_is_a_lower_bound_on_batches(sampling):
    loader = SeqDataLoader(CORPUS, 3, 7, sampling, seed=0)
    counts = [sum(1 for _ in loader) for _ in range(20)]
    assert min(counts) == len(loader)
    assert loader.carries_state == (sampling == "sequential")


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"), (dict(num_steps=-1), "num_steps"), (dict(num_steps=2.5), "num_steps"),
    (dict(sampling="shuffled"), "sampling"),
])
def test_bad_arguments(kwargs, match):
    args = dict(corpus=CORPUS, batch_size=2, num_steps=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SeqDataLoader(**args)


def test_corpus_too_short_or_not_ids():
    with pytest.raises(ValueError, match="too few"):
        list(seq_data_iter_sequential(CORPUS[:20], 4, 5))
    with pytest.raises(ValueError, match="too few"):
        list(seq_data_iter_random(CORPUS[:20], 4, 5))
    with pytest.raises(ValueError, match="corpus"):
        list(seq_data_iter_random(np.zeros((10, 10), np.int32), 2, 2))
    with pytest.raises(ValueError, match="corpus"):
        list(seq_data_iter_random(np.zeros(100), 2, 2))


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_state_dict_mid_epoch_carries_the_position(sampling):
    """After any batch k of an epoch, a loader loaded from state_dict() yields exactly the rest of
    that epoch and then the same next epochs as the uninterrupted loader (no reaching into generators)."""
    ref = SeqDataLoader(CORPUS, 4, 5, sampling, seed=3)
    epochs = [[x.copy() for x, _ in ref] for _ in range(3)]
    flat = [x for e in epochs for x in e]
    n0 = len(epochs[0])
    for k in range(0, n0 + 1):
        a = SeqDataLoader(CORPUS, 4, 5, sampling, seed=3)
        it = iter(a)
        for _ in range(k):
            next(it)
        state = a.state_dict()
        assert state["batch"] == k
        b = SeqDataLoader(CORPUS, 4, 5, sampling, seed=123)
        b.load_state_dict(state)
        got = [x for x, _ in b] + [x for e in range(2) for x, _ in b]
        assert len(got) == len(flat) - k
        assert all(np.array_equal(x, y) for x, y in zip(got, flat[k:]))
    # between epochs the state is the Generator's and batch 0
    a = SeqDataLoader(CORPUS, 4, 5, sampling, seed=3)
    list(a)
    assert a.state_dict()["batch"] == 0
    # without a loaded state every iter() starts a new epoch (an abandoned one is not continued)
    a = SeqDataLoader(CORPUS, 4, 5, sampling, seed=3)
    next(iter(a))
    assert np.array_equal(next(iter(a))[0], epochs[1][0])


def test_load_state_dict_is_validated_naming_the_key():
    a = SeqDataLoader(CORPUS, 4, 5, "sequential", seed=3)
    good = a.state_dict()
    b = SeqDataLoader(CORPUS, 4, 5, "sequential", seed=3)
    exact = sum(1 for _ in seq_data_iter_sequential(CORPUS, 4, 5, _gen(good)))   # that epoch's batches
    b.load_state_dict(dict(good, batch=exact))        # the last batch of that epoch: accepted
    for bad, key in [(dict(good, batch=exact + 1), "batch"), (dict(good, batch=-1), "batch"),
                     (dict(good, batch="3"), "batch"), (dict(good, bit_generator={"bit_generator": "MT19937"}),
                                                        "bit_generator"),
                     (dict(good, bit_generator={"bit_generator": "PCG64", "state": "x"}), "bit_generator"),
                     ({}, "bit_generator"), ([], "state")]:
        with pytest.raises(ArgumentError, match=rf"state(\['{key}'\])?"):
            SeqDataLoader(CORPUS, 4, 5, "sequential", seed=3).load_state_dict(bad)


def _gen(state):
    g = np.random.default_rng()
    g.bit_generator.state = state["bit_generator"]
    return g
