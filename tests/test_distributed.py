"""fastseq.ngram.distributed on a real dask.distributed.LocalCluster (2 worker processes on the
loopback): the model equals the single-machine fit bit for bit, ARPA bytes included."""
import os
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import pytest

from fastseq.errors import FastseqError
from fastseq.ngram import KneserNeyLM, LaplaceLM
from fastseq.text import read_lines

# No skip without Dask: the test extra installs it ("dask[distributed,dataframe]"), and CI runs these.
from dask import distributed  # noqa: E402

from fastseq.ngram import distributed as fd  # noqa: E402
from test_outofcore import assert_same_model  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # Worker processes: the counting runs where the partitions are, not in the test's process.
    with fd.cluster(workers=2) as c:
        assert isinstance(c, distributed.Client)
        yield c


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The Time Machine in three files (small: the shuffles of estimate="shuffle" are many tasks)."""
    lines = read_lines("timemachine")
    folder = tmp_path_factory.mktemp("parts")
    paths, step = [], len(lines) // 3 + 1
    for j in range(3):
        p = folder / f"part-{j}.txt"
        p.write_text("\n".join(lines[j * step:(j + 1) * step]) + "\n", encoding="utf-8")
        paths.append(str(p))
    return paths, lines


def test_cluster_has_two_worker_processes(client):
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert len({client.run(os.getpid)[w] for w in workers} | {os.getpid()}) == 3


@pytest.mark.parametrize("order", [4])
def test_merge_in_a_tree_equals_single_machine_fit(client, parts, tmp_path, order):
    paths, lines = parts
    # small blocks: 9 partitions, so the vocabulary and the counts go up a tree
    got = fd.fit(client, paths, order, blocksize="20KiB", memory="2M")
    want = KneserNeyLM(order).fit(lines)
    assert_same_model(got, want)
    got.to_arpa(tmp_path / "d.arpa")
    want.to_arpa(tmp_path / "s.arpa")
    assert (tmp_path / "d.arpa").read_bytes() == (tmp_path / "s.arpa").read_bytes()


def test_laplace_and_a_bag_of_lines(client, parts):
    import dask.bag as db
    _, lines = parts
    bag = db.from_sequence(lines, npartitions=5)
    assert_same_model(fd.fit(client, bag, 3, model=LaplaceLM(3, eps=0.25)), LaplaceLM(3, eps=0.25).fit(lines))


@pytest.mark.slow
@pytest.mark.parametrize("order", [3])
def test_shuffle_estimate_equals_single_machine_fit(client, parts, tmp_path, order):
    paths, lines = parts
    got = fd.fit(client, paths, order, estimate="shuffle")
    want = KneserNeyLM(order).fit(lines)
    assert got.discounts == want.discounts
    assert_same_model(got, want)
    got.to_arpa(tmp_path / "d.arpa")
    want.to_arpa(tmp_path / "s.arpa")
    assert (tmp_path / "d.arpa").read_bytes() == (tmp_path / "s.arpa").read_bytes()


def test_vocabulary_is_in_order_of_first_appearance(client):
    import dask.bag as db
    bag = db.from_sequence(["z y", "x z", "<unk> w", "y v"], npartitions=4)
    assert fd.vocabulary(client, bag) == ["<unk>", "<s>", "</s>", "z", "y", "x", "w", "v"]


def test_errors(client, parts):
    import dask.bag as db
    with pytest.raises(FastseqError, match="reserved"):
        fd.fit(client, db.from_sequence(["a </s> b"], npartitions=1), 2)
    with pytest.raises(FastseqError, match="estimate"):
        fd.fit(client, parts[0], 2, estimate="sideways")
    with pytest.raises(FastseqError, match="Kneser-Ney only"):
        fd.fit(client, parts[0], 2, model=LaplaceLM(2), estimate="shuffle")
    with pytest.raises(FastseqError, match="files"):
        fd.fit(client, [], 2)
    with pytest.raises(FastseqError, match="^workers"):
        with fd.cluster(workers=0):
            pass
    with pytest.raises(FastseqError, match="^workers"):
        with fd.cluster("tcp://127.0.0.1:1", workers=2):
            pass
