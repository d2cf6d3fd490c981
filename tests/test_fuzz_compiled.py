"""Every compiled entry point, public or private, against hostile arguments: only Python exceptions.

fastseq._core (C++), fastseq._text and fastseq.ngram._count (Cython) are called with wrong dtypes,
shapes, strides, alignments, ids from -2^63 to 2^63-1, NaN/inf, empty arrays and aliased buffers.
The contract of each: a bad argument raises fastseq.errors.ArgumentError (a ValueError) whose
message starts with the argument's name; nothing reads or writes out of bounds.

Cases that crashed the process before the checks existed run in a subprocess, so a regression
fails one test instead of ending the suite. The hypothesis tests run in-process: they rely on the
checks being complete (the sanitizer run, tools/sanitize, runs them under AddressSanitizer).
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastseq import _core, _text
from fastseq.errors import ArgumentError
from fastseq.ngram import _count

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def run_isolated(code):
    """Run code in a fresh interpreter; returns (returncode, stdout+stderr)."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


# ----------------------------------------------------------------------------- crashes found today (issue 12, item 6)
# Each of these segfaulted, corrupted the heap or read out of bounds before the checks.
CRASHES = {
    "count_ids_far": ("ids", "_text.count_ids(np.array([10**8], np.int32), 1)"),
    "count_ids_heap": ("ids", "_text.count_ids(np.array([3, 4, 5], np.int32), 3)"),
    "count_ids_negative": ("ids", "_text.count_ids(np.array([-1], np.int32), 3)"),
    "count_ids_none": ("ids", "_text.count_ids(None, 3)"),
    "count_codepoints": ("cps", "_text.count_codepoints(np.array([0xFFFFFFFF], np.uint32))"),
    "count_codepoints_edge": ("cps", "_text.count_codepoints(np.array([0x110000], np.uint32))"),
    "remap_far": ("ids", "_text.remap(np.array([10**8], np.int32), np.zeros(3, np.int32))"),
    "remap_small_overrun": ("ids", "_text.remap(np.array([3], np.int32), np.zeros(3, np.int32))"),
    "remap_negative": ("ids", "_text.remap(np.array([-5], np.int32), np.zeros(3, np.int32))"),
    "remap_codepoints": ("cps", "_text.remap_codepoints(np.array([0xFFFFFFFF], np.uint32), "
                                "np.zeros(0x110000, np.int32))"),
    "remap_codepoints_short_table": ("cps", "_text.remap_codepoints(np.array([70000], np.uint32), "
                                            "np.zeros(10, np.int32))"),
    "backoff_starts_far": ("starts", """_count.backoff_logp(np.array([0, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([0, 10**9, 10**9], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "backoff_starts_negative": ("starts", """_count.backoff_logp(np.array([0, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([-10**9, 0, 1], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "backoff_starts_decreasing": ("starts", """_count.backoff_logp(np.array([1, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([1, 0, 1], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "intern_tokens_eq_clears": ("", """
        class Evil(str):
            def __hash__(self):
                return 1
            def __eq__(self, other):
                toks.clear()  # frees every token not yet interned
                return False
        toks = [Evil("a" * 1000 + str(i)) for i in range(20)]
        ids, uniq = _text.intern_tokens(toks)
        assert ids.tolist() == list(range(20)) and [u[1000:] for u in uniq] == [str(i) for i in range(20)]
        print("OK")"""),
}


_PRELUDE = """
import sys, traceback
import numpy as np
from fastseq import _text
from fastseq.ngram import _count
from fastseq.errors import ArgumentError
"""


def _case_source(case):
    """A function body that prints 'OK' when the case behaves: ArgumentError naming the argument."""
    name, call = CRASHES[case]
    body = textwrap.dedent(call)
    if name:
        body = (f"try:\n{textwrap.indent(body, '    ')}\n    print('no error')\n"
                f"except ArgumentError as e:\n"
                f"    print('OK' if str(e).startswith({name!r}) else 'wrong message: ' + str(e))\n")
    return f"def case_{case}():\n{textwrap.indent(body, '    ')}\n"


@pytest.fixture(scope="module")
def crash_results():
    """Every case in as few interpreters as possible: a case that kills its interpreter is recorded
    with the exit status and the remaining cases go on in a fresh one."""
    results, todo = {}, sorted(CRASHES)
    while todo:
        src = _PRELUDE + "".join(_case_source(c) for c in todo) + textwrap.dedent(f"""
            for c in {todo!r}:
                print("START", c, flush=True)
                try:
                    globals()["case_" + c]()
                except BaseException:
                    traceback.print_exc(file=sys.stdout)
                print("END", c, flush=True)
            """)
        rc, out = run_isolated(src)
        current, lines = None, []
        for line in out.splitlines():
            if line.startswith("START "):
                current, lines = line[6:], []
            elif line.startswith("END ") and current:
                results[current] = "\n".join(lines)
                current = None
            elif current:
                lines.append(line)
        done = [c for c in todo if c in results]
        if current is not None:
            results[current] = f"the interpreter died (exit {rc}):\n" + "\n".join(lines) + out[-1500:]
            done.append(current)
        elif len(done) < len(todo):
            raise AssertionError(f"exit {rc} before any case ran:\n{out[-3000:]}")
        todo = [c for c in todo if c not in done]
    return results


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_crash_found_today_is_an_argument_error(case, crash_results):
    assert crash_results[case].strip().endswith("OK"), crash_results[case]


# ----------------------------------------------------------------------------- hypothesis: hostile arguments
INT_EDGES = [-2**63, -2**32, -2**31 - 1, -2**31, -2, -1, 0, 1, 2, 3, 2**31 - 2, 2**31 - 1, 2**31, 2**32, 2**63 - 1]
DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64, np.bool_,
          np.complex64, ">i4", ">f8"]


def _misaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = buf[1:].view(a.dtype).reshape(a.shape)
    m[...] = a
    return m


def mutate(draw, a):
    """a, or a version of it that breaks one rule of the contract (or none: a strided copy is still valid)."""
    how = draw(st.sampled_from(["same", "same", "dtype", "strided", "misaligned", "readonly", "fortran", "empty",
                                "extra_dim", "flat", "none", "list", "scalar", "nan", "huge"]))
    if how == "dtype":
        return a.astype(draw(st.sampled_from(DTYPES)), casting="unsafe")
    if how == "strided":
        big = np.repeat(a[..., None], 2, axis=-1) if a.ndim else a
        return big[..., 0] if a.ndim else a
    if how == "misaligned" and a.ndim:
        return _misaligned(a)
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if how == "fortran" and a.ndim >= 2:
        return np.asfortranarray(a)
    if how == "empty":
        return np.zeros((0,) * max(a.ndim, 1), a.dtype)
    if how == "extra_dim":
        return a[None]
    if how == "flat":
        return a.ravel()
    if how == "none":
        return None
    if how == "list":
        return a.tolist()
    if how == "scalar":
        return draw(st.sampled_from([0, -1, 2**63, 1.5, float("nan"), "x", b"x", True]))
    if how == "nan" and a.dtype.kind == "f" and a.size:
        a = a.copy()
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
        return a
    if how == "huge" and a.dtype.kind in "iu" and a.size:
        a = a.astype(np.int64 if a.dtype.kind == "i" else np.uint64)
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(
            [e for e in INT_EDGES if np.iinfo(a.dtype).min <= e <= np.iinfo(a.dtype).max]))
        return a.astype(a.dtype)
    return a


def int_scalar(big_ok=True):
    """An integer argument: small, at an edge, or not an integer. big_ok=False: no large valid values
    (a count of tokens to generate, say, where 2^31 - 1 is valid but would run for minutes)."""
    edges = INT_EDGES if big_ok else [e for e in INT_EDGES if e < 0 or e > 2**31 - 1]
    return st.one_of(st.sampled_from(edges), st.integers(-3, 40), st.sampled_from([1.0, None, "3", True]))


def ids_array(dtype, hi):
    """ids mostly in [0, hi), sometimes anywhere in the dtype's range."""
    info = np.iinfo(dtype)
    el = st.one_of(st.integers(0, max(hi - 1, 0)), st.sampled_from([e for e in INT_EDGES if info.min <= e <= info.max]))
    return hnp.arrays(dtype, st.integers(0, 12), elements=el)


def expect_argument_error(call):
    """The call returns, or raises ArgumentError (a ValueError) whose message names an argument."""
    try:
        call()
    except ArgumentError as e:
        msg = str(e)
        assert ":" in msg and msg.split(":")[0].strip(), msg
        return e
    return None


@FUZZ
@given(st.data())
def test_fuzz_text_entry_points(data):
    draw = data.draw
    n = draw(st.one_of(st.integers(0, 20), st.sampled_from([e for e in INT_EDGES if e < 0 or e > 2**31])))
    ids = mutate(draw, draw(ids_array(np.int32, min(max(n, 1), 2**31 - 1))))
    table = mutate(draw, draw(hnp.arrays(np.int32, st.integers(0, 12), elements=st.integers(-5, 5))))
    cps = mutate(draw, draw(hnp.arrays(np.uint32, st.integers(0, 12), elements=st.one_of(
        st.integers(0, 0x10FFFF), st.sampled_from([0x110000, 2**32 - 1])))))
    big_table = np.zeros(0x110000, np.int32) if draw(st.booleans()) else table
    n_arg = draw(st.one_of(st.just(n), int_scalar(big_ok=False)))
    for call in (lambda: _text.count_ids(ids, n_arg), lambda: _text.remap(ids, table),
                 lambda: _text.count_codepoints(cps), lambda: _text.remap_codepoints(cps, big_table)):
        expect_argument_error(call)
    toks = draw(st.one_of(st.lists(st.sampled_from(["a", "b", "", "é", 1, 2.5, None, (1,)]), max_size=8),
                          st.sampled_from([None, "abc", ("a", "b"), 5])))
    try:
        got_ids, uniq = _text.intern_tokens(toks)
    except ArgumentError as e:
        assert str(e).startswith("tokens")
    else:
        assert [uniq[i] for i in got_ids] == toks


@FUZZ
@given(st.data())
def test_fuzz_count_orders_and_merge(data):
    draw = data.draw
    # (a valid V near 2^31 is refused by nothing: counting allocates O(V), which is not what is fuzzed here)
    V = draw(st.one_of(st.integers(1, 6), int_scalar(big_ok=False)))
    T = draw(st.integers(0, 10))
    ids = mutate(draw, draw(hnp.arrays(np.int32, T, elements=st.one_of(st.integers(0, 5), st.sampled_from(
        [-1, 2**31 - 1, -2**31])))))
    room = mutate(draw, np.array([T - i for i in range(T)], np.int32) + draw(st.sampled_from([0, 0, 1, -1])))
    order = draw(st.one_of(st.integers(1, 4), int_scalar(big_ok=False)))
    expect_argument_error(lambda: _count.count_orders(ids, room, order, V))
    k = draw(st.integers(1, 3))
    a = mutate(draw, np.sort(draw(hnp.arrays(np.int32, (draw(st.integers(0, 4)), k), elements=st.integers(0, 3))), 0))
    b = mutate(draw, draw(hnp.arrays(np.int32, (draw(st.integers(0, 4)), draw(st.sampled_from([k, k + 1]))),
                                     elements=st.integers(0, 3))))
    ca = mutate(draw, np.ones(draw(st.integers(0, 4)), np.int64))
    cb = mutate(draw, np.ones(draw(st.integers(0, 4)), np.int64))
    expect_argument_error(lambda: _count.merge_sorted(a, ca, b, cb))


@FUZZ
@given(st.data())
def test_fuzz_backoff_logp(data):
    draw = data.draw
    N = draw(st.integers(1, 3))
    K = [draw(st.integers(0, 4)) for _ in range(N)]
    starts = [np.zeros(0, np.int64)]
    for k in range(1, N):
        cuts = np.sort(draw(hnp.arrays(np.int64, K[k - 1] + 1, elements=st.integers(0, K[k]))))
        starts.append(mutate(draw, cuts))
    lasts = [mutate(draw, draw(hnp.arrays(np.int32, K[k], elements=st.integers(-2, 5)))) for k in range(N)]
    logps = [mutate(draw, draw(hnp.arrays(np.float64, K[k], elements=st.floats(-5, 0)))) for k in range(N)]
    logbs = [mutate(draw, np.zeros(K[k])) for k in range(N)]
    T = draw(st.integers(0, 6))
    stream = mutate(draw, draw(hnp.arrays(np.int64, T, elements=st.one_of(st.integers(0, max(K[0] - 1, 0)),
                                                                      st.sampled_from(INT_EDGES)))))
    q = mutate(draw, draw(hnp.arrays(np.int64, T, elements=st.one_of(st.integers(0, 5), st.sampled_from(INT_EDGES)))))
    lists = [starts, lasts, logps, logbs]
    if draw(st.booleans()):   # a list of the wrong length or type
        i = draw(st.integers(0, 3))
        lists[i] = draw(st.sampled_from([lists[i][:-1], lists[i] + lists[i][:1], tuple(lists[i]), None]))
    expect_argument_error(lambda: _count.backoff_logp(stream, q, *lists))


def _lm_params(draw, dtype):
    V, H = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = {"W_xh": rng.normal(size=(V, H)), "W_hh": rng.normal(size=(H, H)) * 0.5, "b_h": rng.normal(size=H),
         "W_hq": rng.normal(size=(H, V)), "b_q": rng.normal(size=V)}
    p = {k: v.astype(dtype) for k, v in p.items()}
    if draw(st.booleans()):
        k = draw(st.sampled_from(sorted(p)))
        p[k] = mutate(draw, p[k])
    if draw(st.integers(0, 9)) == 0 and V == H:
        p["W_xh"] = p["W_hh"]   # aliasing: one array as two parameters
    if draw(st.integers(0, 9)) == 0:
        p.pop(draw(st.sampled_from(sorted(p))))
    return p, V, H


@FUZZ
@given(st.data())
def test_fuzz_core_language_model(data):
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    p, V, H = _lm_params(draw, dtype)
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    X = mutate(draw, draw(hnp.arrays(np.int64, (B, T), elements=st.one_of(st.integers(0, V - 1),
                                                                         st.sampled_from(INT_EDGES)))))
    Y = X if draw(st.booleans()) else mutate(draw, draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, V - 1))))
    state = mutate(draw, np.zeros((B, H), dtype))
    scale = None if draw(st.booleans()) else mutate(draw, np.ones((T, B), dtype))
    window, threads = draw(int_scalar()), draw(st.one_of(st.integers(0, 5), int_scalar()))
    nl = draw(st.sampled_from(["tanh", "relu", "sigmoid", None, b"tanh"]))
    expect_argument_error(lambda: _core.lm_forward(X, state, p, nl, threads))
    expect_argument_error(lambda: _core.lm_loss_and_grad(X, Y, state, p, nl, scale, window, threads))
    prefix = mutate(draw, draw(hnp.arrays(np.int64, st.integers(0, 4), elements=st.one_of(
        st.integers(0, V - 1), st.sampled_from(INT_EDGES)))))
    n = draw(st.one_of(st.integers(0, 6), int_scalar(big_ok=False)))
    temperature = draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, float("nan"), float("inf"), 1e308, "1", None]))
    top_k = draw(st.one_of(st.integers(0, 6), int_scalar()))
    u = mutate(draw, draw(hnp.arrays(np.float64, draw(st.integers(0, 6)), elements=st.floats(0, 0.999))))
    expect_argument_error(lambda: _core.lm_generate(prefix, n, p, nl, temperature, top_k, u, threads))


@FUZZ
@given(st.data())
def test_fuzz_core_layer_and_clip(data):
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    D, H, B, T = (draw(st.integers(1, 6)) for _ in range(4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = {"W_xh": rng.normal(size=(D, H)).astype(dtype), "W_hh": rng.normal(size=(H, H)).astype(dtype),
         "b_h": rng.normal(size=H).astype(dtype)}
    if draw(st.booleans()):
        k = draw(st.sampled_from(sorted(p)))
        p[k] = mutate(draw, p[k])
    X = mutate(draw, rng.normal(size=(T, B, D)).astype(dtype))
    h0 = mutate(draw, np.zeros((B, H), dtype))
    threads = draw(st.one_of(st.integers(0, 5), int_scalar()))
    nl = draw(st.sampled_from(["tanh", "relu", "x"]))
    expect_argument_error(lambda: _core.rnn_forward(X, h0, p, nl, threads))
    Hs = mutate(draw, rng.normal(size=(T, B, H)).astype(dtype))
    dHs = Hs if draw(st.booleans()) else mutate(draw, np.ones((T, B, H), dtype))
    dH_T = None if draw(st.booleans()) else mutate(draw, np.ones((B, H), dtype))
    scale = None if draw(st.booleans()) else mutate(draw, np.ones((T, B), dtype))
    window = draw(int_scalar())
    expect_argument_error(lambda: _core.rnn_backward(dHs, X, h0, Hs, p, nl, dH_T, scale, window, threads))
    g = [mutate(draw, rng.normal(size=draw(st.integers(0, 5)))) for _ in range(draw(st.integers(0, 3)))]
    if g and draw(st.booleans()):
        g.append(g[0])   # aliasing: the same gradient twice
    theta = draw(st.sampled_from([1.0, 0.0, -1.0, float("nan"), float("inf"), 1e-300, "1", None, 2**70]))
    expect_argument_error(lambda: _core.clip_grad_norm(g, theta))
    old = _core.get_num_threads()
    try:
        expect_argument_error(lambda: _core.set_num_threads(draw(st.one_of(st.integers(1, 4), int_scalar()))))
    finally:
        _core.set_num_threads(old)


@FUZZ
@given(st.data())
def test_fuzz_core_adam_update(data):
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(0,), (1,), (7,), (3, 5), (70000,)]))
    p = mutate(draw, rng.normal(size=shape).astype(dtype))
    g = p if draw(st.integers(0, 9)) == 0 else mutate(draw, rng.normal(size=shape).astype(dtype))   # aliasing
    m = mutate(draw, np.zeros(shape))
    v = m if draw(st.integers(0, 9)) == 0 else mutate(draw, np.zeros(shape))
    hyper = [draw(st.sampled_from([0.5, 1.0, 0.0, -1.0, float("nan"), float("inf"), 1e-300, "1", None, 2**70]))
             for _ in range(draw(st.sampled_from([6, 7])))]            # the seventh: weight_decay
    expect_argument_error(lambda: _core.adam_update(p, g, m, v, *hyper))


def _cell_params(draw, cell, D, H, L, dtype, rng, V=None):
    G = {"gru": 3, "lstm": 4}.get(cell, 1)
    p = {}
    for l in range(L):
        s = "" if l == 0 else f"_l{l}"
        p["W_xh" + s] = rng.normal(size=(D if l == 0 else H, G * H))
        p["W_hh" + s] = rng.normal(size=(H, G * H)) * 0.5
        p["b_h" + s] = rng.normal(size=G * H)
        p["b_hn" + s] = rng.normal(size=H)
    if V is not None:
        p["W_hq"], p["b_q"] = rng.normal(size=(H, V)), rng.normal(size=V)
    p = {k: v.astype(dtype) for k, v in p.items()}
    if draw(st.booleans()):
        k = draw(st.sampled_from(sorted(p)))
        p[k] = mutate(draw, p[k])
    if draw(st.integers(0, 9)) == 0:
        p.pop(draw(st.sampled_from(sorted(p))))
    return p


CELL_NAMES = ["rnn_tanh", "rnn_relu", "gru", "lstm", "elman", None, b"gru", 3]


@FUZZ
@given(st.data())
def test_fuzz_core_cells(data):
    """The contract's bindings (cell_*): any cell name, depth, state, masks and cache, broken one way or another."""
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    cell = draw(st.sampled_from(CELL_NAMES))
    name = cell if cell in ("rnn_tanh", "rnn_relu", "gru", "lstm") else "lstm"
    P = 2 if name == "lstm" else 1
    G = {"gru": 3, "lstm": 4}.get(name, 1)
    D, H, B, T = (draw(st.integers(1, 5)) for _ in range(4))
    L = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = _cell_params(draw, name, D, H, L, dtype, rng)
    X = mutate(draw, rng.normal(size=(T, B, D)).astype(dtype))
    sshape = (B, H) if P * L == 1 else (P * L, B, H)
    s0 = mutate(draw, np.zeros(sshape, dtype))
    ml = None if draw(st.booleans()) else mutate(draw, np.ones((L - 1, T, B, H), dtype))
    masks = draw(st.sampled_from(["ok", "ok", "none", "short", "lm"]))
    masks = {"ok": (None, ml, None), "none": None, "short": (ml,), "lm": (ml, ml, ml)}[masks]
    threads = draw(st.one_of(st.integers(0, 5), int_scalar()))
    out = None
    try:
        out = _core.cell_forward(cell, X, s0, p, masks, threads)
    except ArgumentError as e:
        assert ":" in str(e), str(e)
    dY = mutate(draw, np.ones((T, B, H), dtype))
    dsT = None if draw(st.booleans()) else mutate(draw, np.ones(sshape, dtype))
    scale = None if draw(st.booleans()) else mutate(draw, np.ones((T, B), dtype))
    window = draw(int_scalar())
    cache = out[2] if out is not None else (np.zeros((L, T, B, H), dtype),) * 7
    how = draw(st.sampled_from(["same", "same", "short", "mutate", "other_cell", "not_tuple"]))
    if how == "short":
        cache = cache[:5]
    elif how == "mutate":
        k = draw(st.integers(0, 6))
        cache = cache[:k] + (mutate(draw, cache[k]) if isinstance(cache[k], np.ndarray) else None,) + cache[k + 1:]
    elif how == "other_cell":
        cell = draw(st.sampled_from(CELL_NAMES[:4]))
    elif how == "not_tuple":
        cache = list(cache)
    expect_argument_error(lambda: _core.cell_backward(cell, dY, dsT, cache, p, scale, window, threads))

    V = draw(st.integers(1, 5))
    lm = _cell_params(draw, name, V, H, L, dtype, rng, V=V)
    ids = mutate(draw, draw(hnp.arrays(np.int64, (B, T), elements=st.one_of(st.integers(0, V - 1),
                                                                           st.sampled_from(INT_EDGES)))))
    Y = ids if draw(st.booleans()) else mutate(draw, rng.integers(0, V, (B, T)))
    lm_masks = None if draw(st.booleans()) else (
        mutate(draw, np.ones((T, B, G * H), dtype)), ml, mutate(draw, np.ones((T, B, H), dtype)))
    expect_argument_error(lambda: _core.cell_lm_forward(cell, ids, s0, lm, threads))
    expect_argument_error(lambda: _core.cell_lm_loss_and_grad(cell, ids, Y, s0, lm, scale, window, lm_masks, threads))
    prefix = mutate(draw, draw(hnp.arrays(np.int64, st.integers(0, 4), elements=st.one_of(
        st.integers(0, V - 1), st.sampled_from(INT_EDGES)))))
    n = draw(st.one_of(st.integers(0, 6), int_scalar(big_ok=False)))
    temperature = draw(st.sampled_from([0.0, 1.0, -1.0, float("nan"), "1"]))
    u = mutate(draw, draw(hnp.arrays(np.float64, draw(st.integers(0, 6)), elements=st.floats(0, 0.999))))
    expect_argument_error(lambda: _core.cell_lm_generate(cell, prefix, n, lm, temperature, 3, u, threads))
