"""The book's minibatch iterators: offsets, coverage, shapes and the continuity property."""
import numpy as np
import pytest

from fastseq import SeqDataLoader, seq_data_iter_random, seq_data_iter_sequential

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


def test_loader_state_dict_resumes_the_same_stream():
    a = SeqDataLoader(CORPUS, 4, 5, "sequential", seed=2)
    next(iter(a))
    state = a.state_dict()
    want = [x for x, _ in a]
    b = SeqDataLoader(CORPUS, 4, 5, "sequential", seed=99)
    b.load_state_dict(state)
    got = [x for x, _ in b]
    assert len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want))


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
