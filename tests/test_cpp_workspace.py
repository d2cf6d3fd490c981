"""The training step's workspace kept across calls (csrc/rnn.h, reused_memory): a call must never see what an
earlier call left there. Each case runs the C++ step against the NumPy reference language model
(test_cpp_cells.reference_lm) after calls that filled the kept memory with other sizes, other cells, other thread
counts, or NaN: a read of stale memory shows as a mismatch or a NaN. Sizes put 6 to 17 rows in a batch slice, so
the AVX2 recurrent product's 6-row tiles and every leftover shape (1 to 5 rows) run (csrc/kernels.h,
gemm_pb_rows)."""
import os
import threading

import numpy as np
import pytest

import fastseq
from fastseq import _core
from fastseq.bptt import Full
from test_cpp_cells import make_params, reference_lm, state_shape
from tolerances import RTOL, assert_close, up


def case(cell, V, H, L, B, T, dtype, seed):
    rng = np.random.default_rng(seed)
    params = make_params(cell, V, H, L, dtype, rng, V=V)
    ids = rng.integers(0, V, (B, T))
    Yt = rng.integers(0, V, (B, T))
    s0 = rng.normal(0, 0.5, state_shape(cell, L, B, H)).astype(dtype)
    return cell, params, ids, Yt, s0, L


def check(c, threads):
    """One C++ step of case c on `threads` slices, against the reference."""
    cell, params, ids, Yt, s0, L = c
    dtype = s0.dtype
    B, T = ids.shape
    plan = Full().plan(T, B, dtype)
    loss, grads, sT = _core.cell_lm_loss_and_grad(cell, ids, Yt, s0, params, plan[0], plan[1], None, threads)
    lr, gr, sTr, _ = reference_lm(cell, params, ids, Yt, s0, plan, None, L)
    assert abs(loss - lr) <= RTOL[dtype] * abs(lr), (loss, lr)
    assert_close(sT, sTr, dtype, "state_T")
    exact = None
    if dtype == np.float32:  # the float32 reference's own rounding, for sums that cancel (tolerances.py)
        exact = reference_lm(cell, {k: up(v) for k, v in params.items()}, ids, Yt, up(s0), (up(plan[0]), plan[1]),
                             None, L)[1]
    for k in gr:
        assert_close(grads[k], gr[k], dtype, k, exact=None if exact is None else exact[k])


def poison(cell, dtype, threads):
    """A large step with NaN parameters: afterwards the kept workspace (and the packed W_hh) hold NaN."""
    cell, params, ids, Yt, s0, L = case(cell, 11, 48, 2, 34, 9, dtype, 0)
    params = {k: np.full_like(v, np.nan) for k, v in params.items()}
    plan = Full().plan(ids.shape[1], ids.shape[0], dtype)
    loss, _, _ = _core.cell_lm_loss_and_grad(cell, ids, Yt, s0, params, plan[0], plan[1], None, threads)
    assert np.isnan(loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_a_step_after_a_nan_step_of_another_size_matches_the_reference(cell, dtype):
    for threads in (1, 2):
        poison(cell, dtype, threads)
        check(case(cell, 7, 20, 1, 2 * 13, 5, dtype, 1), threads)  # smaller: reuses the front of the memory


def test_models_of_different_sizes_alternating_with_thread_counts_changed_between_calls():
    small = case("gru", 9, 12, 1, 12, 6, np.float32, 2)     # slices of 6 rows (2 threads), 12 (1)
    big = case("gru", 13, 40, 2, 35, 4, np.float32, 3)      # slices of 17 + 18, 11-12 (3 threads), 35
    other = case("lstm", 6, 33, 2, 16, 3, np.float64, 4)    # the other dtype's memory, and another cell
    for threads in (2, 1, 3, 2):
        for c in (big, small, other, small, big):
            check(c, threads)
    before = fastseq.get_num_threads()
    try:
        for n in (1, 2):  # what users get: the split chosen from the thread count
            fastseq.set_num_threads(n)
            check(big, 0)
            check(small, 0)
    finally:
        fastseq.set_num_threads(before)


def test_concurrent_calls_from_two_python_threads_keep_their_own_workspace():
    a = case("gru", 9, 30, 2, 16, 5, np.float32, 5)
    b = case("lstm", 7, 18, 1, 22, 7, np.float32, 6)
    errors = []

    def run(c, threads):
        try:
            for _ in range(4):
                check(c, threads)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=run, args=(a, 2)), threading.Thread(target=run, args=(b, 2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_steps_after_the_parent_kept_its_workspace():
    big = case("gru", 13, 40, 2, 35, 4, np.float32, 7)
    small = case("lstm", 7, 20, 1, 24, 5, np.float32, 8)
    check(big, 2)  # the parent's thread now keeps a workspace (and its pool has workers)
    pid = os.fork()
    if pid == 0:  # the child: a copy of the parent's kept memory, none of its pool's threads
        code = 1
        try:
            check(small, 2)
            check(big, 2)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    check(small, 2)  # and the parent goes on
