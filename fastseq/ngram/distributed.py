"""N-gram models fitted on a Dask cluster (the optional ``dask`` extra: pip install "fastseq[dask]").

    from dask.distributed import Client
    from fastseq.ngram.distributed import fit
    client = Client("tcp://scheduler:8786")
    lm = fit(client, ["part-0.txt", "part-1.txt"], order=5)              # == KneserNeyLM(5).fit(lines)
    lm = fit(client, files, order=5, estimate="shuffle")                 # the top order never on one worker

Data flow (docs/NGRAM-SCALE.md says what moves over the network at each step):

1. The lines: ``dask.bag.read_text`` of the files (blocks cut at line ends) or a bag of lines.
2. Vocabulary, one reduction: each partition lists its words in order of first appearance; an
   ordered union over the partitions in their order (a tree, ``split_every`` at a time) gives the
   order ``fit`` gives.
3. Counts where the lines lie: each partition is encoded and counted on its worker
   (fastseq.ngram.outofcore: in runs within ``memory``, spilled to the worker's ``tmp_dir``).
4. ``estimate="merge"``: the counts are summed in a tree of merges and estimated on the client by
   ``KneserNeyLM.fit_counts`` (or any estimator's), the same code as a single-machine fit.
   ``estimate="shuffle"`` (Kneser-Ney): the counts of each order become a Dask DataFrame and the
   estimate is expressed as shuffles, the two sort orders of Heafield et al. (2013), "Scalable
   Modified Kneser-Ney Language Model Estimation": grouped by suffix for the adjusted
   (continuation) counts, grouped by context for the normalisation and backoffs, joined by suffix
   with the order below for the interpolation. Only the unigrams, the counts of counts and the
   final tables reach the client.

Both give the model of a single-machine fit bit for bit: counts are integers, and the sums over a
context in Kneser-Ney are sums of integers (fastseq.ngram.models.kn_context_sums), exact in any order.
"""
import contextlib
import operator

import numpy as np

from ..errors import ArgumentError
from .counting import NGramCounts, _check_order
from .models import BOS, BOS_ID, EOS, UNK, KneserNeyLM, _Estimator, _lookup, _tables, kn_gamma, kn_probability
from .outofcore import count_files, parse_memory

__all__ = ["fit", "count", "vocabulary", "cluster"]


def _require_dask():
    try:
        import dask.bag  # noqa: F401
        import dask.dataframe  # noqa: F401
    except ImportError as e:
        raise ImportError("fastseq.ngram.distributed needs Dask: pip install \"fastseq[dask]\"") from e


def _bag(source, blocksize):
    import dask.bag as db
    if isinstance(source, db.Bag):
        return source
    if isinstance(source, str) or not hasattr(source, "__iter__"):
        source = [source]
    paths = list(source)
    if not paths:
        raise ArgumentError("files: expected at least one file")
    for p in paths:
        if not isinstance(p, str):
            raise ArgumentError(f"files: expected paths (str) or a dask bag of lines, got {p!r}")
    return db.read_text(paths, blocksize=blocksize, encoding="utf-8")


# ----- tasks (run on the workers; module-level so that they pickle by reference) ----------------
def _first_seen(lines):
    seen = {}
    for line in lines:
        if not isinstance(line, str):
            raise ArgumentError(f"lines: expected str lines, got a {type(line).__name__}")
        for t in line.split():
            seen.setdefault(t, None)
    return list(seen)


def _ordered_union(parts):
    seen = {}
    for part in parts:
        for t in part:
            seen.setdefault(t, None)
    return list(seen)


def _count_partition(lines, tokens, order, memory, tmp_dir):
    _, counts = count_files([lines], order, memory=memory, tmp_dir=tmp_dir, tokens=tokens)
    return [counts]


def _sum_counts(parts):
    parts = list(parts)
    total = parts[0]
    for c in parts[1:]:
        total = total + c
    return total


# ----- the public calls --------------------------------------------------------------------
@contextlib.contextmanager
def cluster(scheduler=None, workers=None):
    """A ``dask.distributed.Client`` for the command's --scheduler ADDRESS / --workers N: connected
    to the scheduler at ``scheduler``, or to a LocalCluster of ``workers`` worker processes (one
    thread each) on 127.0.0.1 that is stopped on exit."""
    _require_dask()
    from dask import distributed
    if scheduler is not None and workers is not None:
        raise ArgumentError("workers: a local cluster's size; not with scheduler (a running cluster)")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler:
            raise ArgumentError(f"scheduler: expected an address such as 'tcp://host:8786', got {scheduler!r}")
        with distributed.Client(scheduler) as client:
            yield client
        return
    from .._checks import check_int
    workers = check_int("workers", 2 if workers is None else workers, 1)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        yield client


def vocabulary(client, files, blocksize="64MiB", split_every=8):
    """The model vocabulary of the lines ('<unk>', '<s>', '</s>', then words in order of first
    appearance), gathered by one tree reduction over the partitions."""
    _require_dask()
    words = client.compute(_bag(files, blocksize).reduction(_first_seen, _ordered_union, split_every=split_every),
                           sync=True)
    return _tokens(words)


def _tokens(words):
    for t in (BOS, EOS):
        if t in words:
            raise ArgumentError(f"sentences: {t!r} is reserved (each sentence is wrapped in <s> ... </s> for you)")
    if not words:
        raise ArgumentError("files: empty corpus (no tokens to fit)")
    return [UNK, BOS, EOS] + [t for t in words if t != UNK]


def _counted(client, files, order, memory, tmp_dir, blocksize, split_every):
    """(tokens, bag with one NGramCounts per partition)."""
    order = _check_order(order)
    memory = parse_memory(memory)
    bag = _bag(files, blocksize)
    tokens = vocabulary(client, bag, blocksize, split_every)
    # scattered once, so the vocabulary travels to each worker once, not with every task
    (tokens_f,) = client.scatter([tokens], broadcast=True)     # one object (a bare list would scatter each word)
    return tokens, bag.map_partitions(_count_partition, tokens_f, order, memory, tmp_dir)


def count(client, files, order, memory="1G", tmp_dir=None, blocksize="64MiB", split_every=2):
    """(tokens, NGramCounts) of every line of the files (or of a dask bag of lines): counted on the
    workers, each partition within ``memory`` (runs spilled to ``tmp_dir`` on the worker), and
    summed in a tree of merges (``split_every`` counts at a time)."""
    _require_dask()
    tokens, per_part = _counted(client, files, order, memory, tmp_dir, blocksize, max(2, split_every))
    total = client.compute(per_part.reduction(_sum_counts, _sum_counts, split_every=max(2, split_every)), sync=True)
    return tokens, total


def fit(client, files, order, model=None, estimate="merge", memory="1G", tmp_dir=None, blocksize="64MiB",
        split_every=2):
    """A model of every line of the files (or of a dask bag of lines), fitted on the cluster of
    ``client`` (a ``dask.distributed.Client``); equal bit for bit to ``model.fit(lines)``.

    model: an unfitted KneserNeyLM or LaplaceLM (default ``KneserNeyLM(order)``); its order wins.
    estimate: "merge" (counts summed in a tree, estimated on the client) or "shuffle" (Kneser-Ney
    estimated as Dask DataFrame shuffles, for counts too big for one worker or the client).
    memory, tmp_dir: each worker's budget and spill folder for counting its partition.
    blocksize: bytes of text per partition (``dask.bag.read_text``).
    """
    _require_dask()
    if model is None:
        model = KneserNeyLM(_check_order(order))
    if not isinstance(model, _Estimator):
        raise ArgumentError(f"model: expected an unfitted KneserNeyLM or LaplaceLM, got {model!r}")
    if estimate == "merge":
        tokens, counts = count(client, files, model.order, memory, tmp_dir, blocksize, split_every)
        return model.fit_counts(tokens, counts)
    if estimate != "shuffle":
        raise ArgumentError(f"estimate: expected 'merge' or 'shuffle', got {estimate!r}")
    if type(model) is not KneserNeyLM:
        raise ArgumentError("estimate: 'shuffle' estimates Kneser-Ney only; use estimate='merge' for "
                            f"{type(model).__name__}")
    tokens, per_part = _counted(client, files, model.order, memory, tmp_dir, blocksize, max(2, split_every))
    return _estimate_by_shuffles(client, model, tokens, per_part)


# ----- Kneser-Ney as shuffles ---------------------------------------------------------------
def _cols(k, start=0):
    return [f"w{j}" for j in range(start, start + k)]


def _frame(parts, k):
    import pandas as pd
    (counts,) = list(parts)
    g, c = counts[k]
    df = pd.DataFrame({name: g[:, j] for j, name in enumerate(_cols(k))})
    df["n"] = c
    return [df]


def _order_frame(per_part, k):
    """Dask DataFrame (w0..w{k-1}, n) of the order-k counts, one partition per text partition."""
    import dask
    import dask.dataframe as dd
    import pandas as pd
    meta = pd.DataFrame({name: pd.Series(dtype=np.int32) for name in _cols(k)})
    meta["n"] = pd.Series(dtype=np.int64)
    parts = per_part.map_partitions(_frame, k).to_delayed()
    return dd.from_delayed([dask.delayed(operator.itemgetter(0))(p) for p in parts], meta=meta, verify_meta=False)


def _sum_by(df, cols, what, npart):
    """Grouped sums of the columns ``what`` by ``cols``, as columns again (a shuffle by ``cols``)."""
    out = df.groupby(cols).agg({w: "sum" for w in what}, split_out=npart, shuffle_method="tasks")
    return out.reset_index()


def _adjust(df):
    """Columns j1, j2, j3 (a == 1, 2, >= 3) for the context sums (integers: exact in any order)."""
    a3 = np.minimum(df["a"].to_numpy(), 3)
    return df.assign(j1=(a3 == 1).astype(np.int64), j2=(a3 == 2).astype(np.int64), j3=(a3 == 3).astype(np.int64))


def _gamma(df, D):
    return df.assign(gamma=kn_gamma(D, df["den"].to_numpy(np.float64),
                                    [df[j].to_numpy(np.float64) for j in ("j1", "j2", "j3")]))


def _prob(df, D, p1=None):
    lower = p1[df["w1"].to_numpy()] if p1 is not None else df["lower"].to_numpy()
    p = kn_probability(df["a"].to_numpy(np.int64), D, df["den"].to_numpy(np.float64), df["gamma"].to_numpy(),
                       lower)
    return df.assign(p=p)


def _estimate_by_shuffles(client, model, tokens, per_part):
    N, V = model.order, len(tokens)
    per_part = client.persist(per_part)
    npart = max(1, per_part.npartitions)
    # merged counts of every order: a shuffle by the n-gram
    c = {k: client.persist(_sum_by(_order_frame(per_part, k), _cols(k), ["n"], npart)) for k in range(1, N + 1)}
    # adjusted counts: the raw count at the top order and for n-grams starting with '<s>', else the
    # number of distinct words to the left: the (k+1)-grams grouped by their suffix (a shuffle)
    a = {N: c[N].assign(a=c[N]["n"])}
    for k in range(N - 1, 0, -1):
        left = c[k + 1][_cols(k, 1)].assign(cont=np.int64(1))
        left = left.rename(columns=dict(zip(_cols(k, 1), _cols(k))))
        cont = _sum_by(left, _cols(k), ["cont"], npart)
        t = c[k].merge(cont, on=_cols(k), how="left", shuffle_method="tasks")
        t = t.assign(cont=t["cont"].fillna(0).astype(np.int64))
        a[k] = client.persist(t.assign(a=t["cont"].where(t["w0"] != BOS_ID, t["n"])).drop(columns=["cont"]))
    # unigrams on the client (V rows), dense by id as the single-machine tables
    uni = a[1].compute()
    a1 = np.zeros(V, np.int64)
    a1[uni["w0"].to_numpy()] = uni["a"].to_numpy()
    a1[BOS_ID] = 0
    n = {1: np.bincount(np.minimum(a1, 5), minlength=6)[1:5]}
    for k in range(2, N + 1):
        vc = a[k]["a"].clip(upper=5).value_counts().compute()
        n[k] = np.array([int(vc.get(j, 0)) for j in range(1, 5)])
    D = model._discounts(n)
    p1 = model._unigram_probability(a1, D[1])
    tables = {}
    lower = None
    for k in range(2, N + 1):
        ak = a[k].map_partitions(_adjust)
        ctx = _sum_by(ak.rename(columns={"a": "den"}), _cols(k - 1), ["den", "j1", "j2", "j3"], npart)
        ctx = client.persist(ctx.map_partitions(_gamma, D[k]))     # gamma(c) of each context: the backoff
        t = ak.merge(ctx[_cols(k - 1) + ["den", "gamma"]], on=_cols(k - 1), how="left", shuffle_method="tasks")
        if k == 2:
            t = t.map_partitions(_prob, D[k], p1)
        else:                                                       # P(w | c') of the suffix: a join by suffix
            low = lower.rename(columns=dict(zip(_cols(k - 1), _cols(k - 1, 1)))).rename(columns={"p": "lower"})
            t = t.merge(low, on=_cols(k - 1, 1), how="left", shuffle_method="tasks").map_partitions(_prob, D[k])
        lower = client.persist(t[_cols(k) + ["p"]])
        tables[k] = (lower, ctx[_cols(k - 1) + ["gamma"]])
    # the tables, gathered on the client in the single-machine layout
    got = {k: (tables[k][0].compute(), tables[k][1].compute()) for k in tables}
    grams, counts, p, b = {1: np.arange(V, dtype=np.int32)[:, None]}, {1: np.ones(V, np.int64)}, {1: p1}, {}
    for k in range(2, N + 1):
        df = got[k][0]
        g = df[_cols(k)].to_numpy(np.int32)
        perm = np.lexsort(g.T[::-1])
        grams[k], counts[k], p[k] = np.ascontiguousarray(g[perm]), np.ones(len(g), np.int64), df["p"].to_numpy()[perm]
    rows, _, parent, _ = _tables(tokens, NGramCounts(grams, counts, V), N)
    for k in range(2, N + 1):
        gam = got[k][1]
        b[k - 1] = np.ones(len(rows[k - 1]))
        if len(gam):
            b[k - 1][_rows_of(rows, parent, V, gam[_cols(k - 1)].to_numpy(np.int64))] = gam["gamma"].to_numpy()
    b[N] = np.ones(len(rows[N]))
    model._finish(tokens, rows, parent, p, b)
    return model


def _rows_of(rows, parent, V, g):
    """Row of each n-gram of g (M, n) in table n (all present)."""
    idx = g[:, 0].copy()
    for m in range(2, g.shape[1] + 1):
        idx = _lookup(parent[m] * V + rows[m][:, -1], V, idx, g[:, m - 1])
    return idx
