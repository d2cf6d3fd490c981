"""fastseq.ngram.query.Model against the kenlm module on the same files: every sentence of a
held-out text, states chained word by word, OOVs and '</s>' included."""
import copy

import pytest

from fastseq.ngram import KneserNeyLM, LaplaceLM, Model, State, load_arpa, write_binary
from fastseq.ngram import query
from fastseq.text import read_lines

kenlm = pytest.importorskip("kenlm")


@pytest.fixture(scope="module")
def tm_split():
    lines = [line for line in read_lines("timemachine", "d2l") if line]
    n = int(len(lines) * 0.9)
    return [line.split() for line in lines[:n]], [line.split() for line in lines[n:]]


@pytest.fixture(scope="module", params=[(KneserNeyLM, 2, {}), (KneserNeyLM, 3, {}), (LaplaceLM, 4, {}),
                                        (KneserNeyLM, 5, dict(discount_fallback=True))],
                ids=["kn2", "kn3", "laplace4", "kn5"])
def models(request, tm_split, tmp_path_factory):
    cls, order, kw = request.param
    d = tmp_path_factory.mktemp("q")
    cls(order, **kw).fit(tm_split[0]).to_arpa(d / "m.arpa")
    write_binary(d / "m.arpa", d / "m.bin")
    return kenlm.Model(str(d / "m.arpa")), Model(d / "m.arpa"), Model(d / "m.bin")


def held_out(tm_split):
    # every held-out sentence, plus OOVs, a literal '<unk>', '</s>' and '<s>' inside, the empty one
    return [" ".join(s) for s in tm_split[1]] + ["zzz qqq the", "<unk> the", "the </s> time", "a <s> b", "",
                                                 "  the\ttime  machine "]


def test_score_full_scores_perplexity_as_kenlm(models, tm_split):
    k, qa, qb = models
    assert qa.order == qb.order == k.order
    for s in held_out(tm_split):
        for bos in (True, False):
            for eos in (True, False):
                ours = qa.score(s, bos=bos, eos=eos)
                assert ours == pytest.approx(k.score(s, bos=bos, eos=eos), rel=1e-5, abs=1e-4)
                assert qb.score(s, bos=bos, eos=eos) == ours
                got, want = list(qa.full_scores(s, bos=bos, eos=eos)), list(k.full_scores(s, bos=bos, eos=eos))
                assert [(n, o) for _, n, o in got] == [(n, o) for _, n, o in want]
                assert [p for p, _, _ in got] == pytest.approx([p for p, _, _ in want], rel=1e-5, abs=1e-5)
        assert qa.perplexity(s) == pytest.approx(k.perplexity(s), rel=1e-5)


def test_states_chained_word_by_word_as_kenlm(models, tm_split):
    k, qa, qb = models
    for s in held_out(tm_split)[::3]:
        for q in (qa, qb):
            for begin in ("BeginSentenceWrite", "NullContextWrite"):
                ks, ko = kenlm.State(), kenlm.State()
                qs, qo = State(), State()
                getattr(k, begin)(ks)
                getattr(q, begin)(qs)
                for w in s.split() + ["</s>"]:
                    want = k.BaseFullScore(ks, w, ko)
                    got = q.BaseFullScore(qs, w, qo)
                    assert got.log_prob == pytest.approx(want.log_prob, rel=1e-5, abs=1e-5), (s, w)
                    assert (got.ngram_length, got.oov) == (want.ngram_length, want.oov), (s, w)
                    assert q.BaseScore(qs, w, State()) == got.log_prob
                    ks, ko = ko, ks
                    qs, qo = qo, qs


def test_score_is_the_sum_of_its_words_base_scores(models, tm_split):
    # score() looks the next word up while the current one's probes are in flight: it must still add,
    # in order, exactly the numbers that BaseScore gives word by word (first and last words, OOVs,
    # '</s>' as a word, empty and blank sentences, each bos/eos), and count tokens and OOVs as they are
    _, qa, qb = models
    sents = held_out(tm_split)[::7] + ["the", "zzz", " ", "the zzz", "zzz the time", "the time machine qqq"]
    for q in (qa, qb):
        tokens = oovs = 0
        for s in sents:
            for bos in (True, False):
                for eos in (True, False):
                    st, out = State(), State()
                    (q.BeginSentenceWrite if bos else q.NullContextWrite)(st)
                    total = 0.0
                    for w in s.split() + (["</s>"] if eos else []):
                        total += q.BaseScore(st, w, out)
                        st, out = out, st
                    assert q.score(s, bos=bos, eos=eos) == total, (s, bos, eos)
            tokens += len(s.split()) + 1
            oovs += sum(w not in q for w in s.split())
        _, _, t, o = q.corpus_perplexity(sents)
        assert (t, o) == (tokens, oovs)


def test_membership_and_state_semantics(models):
    k, qa, _ = models
    for w in ("the", "time", "zzz", "<unk>", "<s>", "</s>", ""):
        assert (w in qa) == (w in k), w
    a, b = State(), State()
    qa.BeginSentenceWrite(a)
    qa.BeginSentenceWrite(b)
    assert a == b and hash(a) == hash(b)
    c = State()
    qa.BaseScore(a, "the", c)
    assert c != a and copy.copy(c) == c
    # in_state and out_state may be the same object, as a decoder loop often passes them
    d = copy.copy(a)
    x = qa.BaseScore(d, "the", d)
    assert x == qa.BaseScore(a, "the", State()) and d == c
    with pytest.raises(ValueError, match="in_state"):
        qa.BaseScore(State(), "the", State())


def test_batch_and_corpus_perplexity_as_the_model(tm_split, tmp_path):
    m = KneserNeyLM(4).fit(tm_split[0])
    m.to_arpa(tmp_path / "m.arpa")
    q = Model(tmp_path / "m.arpa")
    sents = [" ".join(s) for s in tm_split[1]]
    scores = q.score_batch(sents)
    assert list(scores) == [q.score(s) for s in sents]
    assert scores == pytest.approx([m.score(s) for s in sents], rel=1e-12, abs=1e-12)
    assert q.corpus_perplexity(sents) == pytest.approx(tuple(m.perplexity(tm_split[1])), rel=1e-12)
    mem = Model.from_lm(m)
    assert list(mem.score_batch(sents)) == list(scores)


def test_batch_lanes_give_the_per_sentence_scores(models, tm_split):
    # score_batch runs several sentences in lockstep: every sentence count (fewer than its lanes,
    # none), empty sentences between others, and each bos/eos setting give score()'s numbers
    k, qa, qb = models
    sents = held_out(tm_split)
    sents = sents[:5] + ["", ""] + sents[5:40] + [""] + sents[-6:]
    for q in (qa, qb):
        for bos, eos in ((True, True), (False, True), (True, False), (False, False)):
            for part in (sents, sents[:1], sents[:3], [""], []):
                got = q.score_batch(part, bos=bos, eos=eos)
                assert got.shape == (len(part),)
                assert list(got) == [q.score(s, bos=bos, eos=eos) for s in part]
        assert q.score_batch(sents) == pytest.approx([k.score(s) for s in sents], abs=1e-4)


def test_kenlm_code_runs_unchanged(tmp_path, tm_split):
    # the usual decoder idiom, with `import fastseq.ngram.query as kenlm`
    LaplaceLM(3).fit(tm_split[0]).to_arpa(tmp_path / "m.arpa")
    scores = []
    for mod in (kenlm, query):
        model = mod.LanguageModel(str(tmp_path / "m.arpa"))
        state, out = mod.State(), mod.State()
        model.BeginSentenceWrite(state)
        total = 0.0
        for w in "the time traveller zzz".split():
            total += model.BaseScore(state, w, out)
            state, out = out, state
        scores.append(total)
    assert scores[1] == pytest.approx(scores[0], rel=1e-5)


def test_lmplz_style_file_with_pruned_suffix(tmp_path):
    # a stored 3-gram whose 2-gram suffix is absent: fastseq's back-off agrees with load_arpa
    p = tmp_path / "m.arpa"
    p.write_text("\\data\\\nngram 1=4\nngram 2=2\nngram 3=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n"
                 "-0.6\ta\t-0.2\n-0.9\tb\n\n\\2-grams:\n-0.2\t<s> a\t-0.1\n-0.4\ta b\t0\n\n\\3-grams:\n"
                 "-0.05\t<s> a a\n\n\\end\\\n")
    q, m = Model(p), load_arpa(p)
    for s in ("a a", "a b", "b a a", "a a b"):
        assert q.score(s) == pytest.approx(m.score(s), abs=1e-12)


def test_suffix_closure_is_found_and_a_pruned_file_keeps_the_full_search(tmp_path, tm_split):
    # fitted models are suffix-closed (queries stop at the first miss); a pruned file is not,
    # and a query that stopped there would miss the stored '<s> a a' (-0.05)
    from fastseq.ngram import _arpa, load_binary
    KneserNeyLM(4).fit(tm_split[0]).to_arpa(tmp_path / "kn.arpa")
    write_binary(tmp_path / "kn.arpa", tmp_path / "kn.bin")
    assert load_binary(tmp_path / "kn.bin").suffix_closed
    p = tmp_path / "pruned.arpa"
    p.write_text("\\data\\\nngram 1=4\nngram 2=2\nngram 3=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n"
                 "-0.6\ta\t-0.2\n-0.9\tb\n\n\\2-grams:\n-0.2\t<s> a\t-0.1\n-0.4\ta b\t0\n\n\\3-grams:\n"
                 "-0.05\t<s> a a\n\n\\end\\\n")
    write_binary(p, tmp_path / "pruned.bin")
    assert not load_binary(tmp_path / "pruned.bin").suffix_closed
    b = load_binary(tmp_path / "pruned.bin")
    assert not _arpa.suffix_closed(b.starts, b.lasts)
    for q in (Model(p), Model(tmp_path / "pruned.bin")):
        assert q.score("a a", eos=False) == pytest.approx(-0.2 - 0.05, abs=1e-12)


def test_probing_tables_refuse_bad_input():
    # private entry points never read out of bounds: a table of the wrong size or with no empty slot
    # (so a search would not end) is refused
    import numpy as np
    from fastseq.ngram import _arpa
    starts = [np.zeros(1, np.int64), np.array([0, 2, 2, 3], np.int64)]
    lasts = [np.arange(3, dtype=np.int32), np.array([1, 2, 0], np.int32)]
    t = _arpa.slot_tables(starts, lasts, [np.zeros(3), np.full(3, -0.5)], [np.zeros(3), np.zeros(0)])[0]
    assert t.shape == (2 * _arpa.slot_count(3),) and _arpa.check_slots(t, 2, 2, 3) is t
    full = t.copy()
    full[::2] = np.arange(len(t) // 2)                  # every slot filled: no empty one ends a search
    for table, K in ((t[:-2], 3), (t, 2), (full, 3), (t.reshape(-1, 2), 3)):
        with pytest.raises(ValueError, match="slot2"):
            _arpa.check_slots(table, 2, 2, K)
    # a key naming a context that is not stored is refused when the rows are rebuilt
    bad = t.copy()
    bad[np.flatnonzero(bad[::2] != np.uint64(2**64 - 1))[0] * 2] = np.uint64(7)
    with pytest.raises(ValueError, match="slot2"):
        _arpa.slot_rows([bad], 2, 3, [3, 3])


def test_batch_threads_give_the_same_scores(models, tm_split):
    # the batch split among threads (GIL released) gives the one-thread numbers bit for bit
    _, qa, qb = models
    sents = held_out(tm_split) * 3
    for q in (qa, qb):
        want = list(q.score_batch(sents, threads=1))
        for t in (2, 3, 7):
            assert list(q.score_batch(sents, threads=t)) == want
        assert list(q.score_batch(sents)) == want and list(q.score_batch(sents[:2], threads=5)) == want[:2]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            qa.score_batch(sents, threads=bad)


def _batch_sents(tm_split):
    # more sentences than the threads' chunks (32 each) and lanes (16) cover, uneven lengths (a few
    # long ones, empty ones), bytes among the str
    base = held_out(tm_split)
    long_one = " ".join(" ".join(s) for s in tm_split[1][:40])
    sents = base * 2 + [long_one, "", long_one[::-1]] + base[:45]
    sents[7] = sents[7].encode("utf-8")
    return sents


def test_batch_of_any_size_on_any_threads_is_score(models, tm_split):
    # every thread count, around the chunk and lane boundaries: each output is score() of its
    # own sentence, bit for bit (a sentence dropped, taken twice or written to another slot fails)
    _, qa, qb = models
    sents = _batch_sents(tm_split)
    for q in (qa, qb):
        want = [q.score(s) for s in sents]
        for n in (0, 1, 15, 16, 17, 31, 32, 33, 64, 65, len(sents)):
            for t in (1, 2, 3, 8, 64):
                got = q.score_batch(sents[:n], threads=t)
                assert got.shape == (n,) and list(got) == want[:n], (n, t)
        for t in (1, 2, 5):
            assert list(q.score_batch(iter(sents), bos=False, eos=False, threads=t)) == [
                q.score(s, bos=False, eos=False) for s in sents]


def test_batch_bad_sentence_or_threads_raises_and_the_model_still_works(models, tm_split):
    _, qa, _ = models
    sents = _batch_sents(tm_split)
    want = list(qa.score_batch(sents, threads=1))
    for bad in (None, 3, ["a", "b"]):
        with pytest.raises(TypeError, match="sentence"):
            qa.score_batch(sents[:100] + [bad] + sents[100:], threads=2)
    for bad in (0, -1, 257, "2", 2.0):
        with pytest.raises((TypeError, ValueError), match="threads"):
            qa.score_batch(sents, threads=bad)
    assert list(qa.score_batch(sents, threads=2)) == want
    assert qa.score_batch([], threads=4).shape == (0,)


def test_batch_from_several_python_threads_at_once(models, tm_split):
    # the work counter belongs to the call, not to the model: concurrent batches do not mix
    import threading
    _, qa, qb = models
    sents = _batch_sents(tm_split)
    want = {id(q): list(q.score_batch(sents, threads=1)) for q in (qa, qb)}
    got, errors = [], []

    def run(q, t):
        try:
            for _ in range(3):
                got.append(list(q.score_batch(sents, threads=t)) == want[id(q)])
        except Exception as e:          # surfaced below: a thread's exception is not the test's
            errors.append(e)
    workers = [threading.Thread(target=run, args=(q, t)) for q in (qa, qb) for t in (1, 2, 3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors and got == [True] * 18


def test_batch_threads_after_fork_and_at_interpreter_exit(tmp_path, tm_split):
    # score_batch keeps no thread between calls: a forked child (whose parent ran threaded
    # batches) and an atexit handler run threaded batches and get the same numbers
    import os
    import subprocess
    import sys
    lm = KneserNeyLM(3).fit(tm_split[0])
    lm.to_arpa(tmp_path / "m.arpa")
    sents = [" ".join(s) for s in tm_split[1]] * 4
    q = Model(tmp_path / "m.arpa")
    want = list(q.score_batch(sents, threads=1))
    assert list(q.score_batch(sents, threads=2)) == want
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:                    # the child: exit code 0 only if the numbers are the same
            ok = list(q.score_batch(sents, threads=2)) == want and list(q.score_batch(sents, threads=3)) == want
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    code = (f"import atexit, sys\nfrom fastseq.ngram import Model\nq = Model({str(tmp_path / 'm.arpa')!r})\n"
            f"s = {sents!r}\nwant = list(q.score_batch(s, threads=1))\n"
            "def last():\n    if list(q.score_batch(s, threads=2)) != want:\n        sys.stdout.write('differ')\n"
            "    sys.stdout.write('done')\natexit.register(last)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "done", r.stderr[-2000:]


def test_state_keeps_a_leaf_ngram_with_a_backoff(tmp_path):
    # a State drops an n-gram with nothing after it only when its backoff is 0: 'a b' has no 3-gram
    # after it but backoff -0.15, which P(c | a b) must still add (-0.15 + P(c | b) = -0.45)
    p = tmp_path / "m.arpa"
    p.write_text("\\data\\\nngram 1=5\nngram 2=3\nngram 3=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n"
                 "-0.6\ta\t-0.2\n-0.9\tb\t-0.25\n-0.8\tc\n\n\\2-grams:\n-0.2\t<s> a\t-0.1\n-0.4\ta b\t-0.15\n"
                 "-0.3\tb c\t0\n\n\\3-grams:\n-0.05\t<s> a b\n\n\\end\\\n")
    write_binary(p, tmp_path / "m.bin")
    k = kenlm.Model(str(p))
    for q in (Model(p), Model(tmp_path / "m.bin")):
        assert [x for x, _, _ in q.full_scores("a b c")] == pytest.approx([-0.2, -0.05, -0.45, -0.5], abs=1e-12)
        assert q.score("a b c") == pytest.approx(load_arpa(p).score("a b c"), abs=1e-12)
        assert q.score("a b c") == pytest.approx(k.score("a b c"), abs=1e-6)
        assert list(q.score_batch(["a b c", "b c", "a b"])) == [q.score(s) for s in ("a b c", "b c", "a b")]
