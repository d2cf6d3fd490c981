"""fastseq.ar: lag features, linear / MLP / latent (RNN) autoregression, k-step prediction."""
import numpy as np
import pytest

from fastseq import ar
from fastseq.ar import LinearAR, MLPAR, RNNAR, book_experiment, lag_features, sine_series


# ----------------------------------------------------------------------------- lag features
def test_lag_features_small_series_by_hand():
    features, targets = lag_features([5.0, -1.0, 2.0, 7.0, 0.0, 3.0], 3)
    np.testing.assert_array_equal(features, [[5, -1, 2], [-1, 2, 7], [2, 7, 0]])
    np.testing.assert_array_equal(targets, [7, 0, 3])
    assert features.shape == (3, 3) and targets.shape == (3,)


def test_lag_features_tau_one_and_minimal_length():
    features, targets = lag_features(np.array([1, 2, 4]), 1)
    np.testing.assert_array_equal(features, [[1], [2]])
    np.testing.assert_array_equal(targets, [2, 4])
    features, targets = lag_features([3.0, 1.0, 4.0], 2)        # n = tau + 1: one row
    np.testing.assert_array_equal(features, [[3, 1]])
    np.testing.assert_array_equal(targets, [4])


def test_lag_features_does_not_alias_the_input():
    x = np.arange(6, dtype=np.float64)
    features, targets = lag_features(x, 2)
    features[0, 0] = targets[0] = 99
    np.testing.assert_array_equal(x, np.arange(6))


# ----------------------------------------------------------------------------- linear AR
def _noiseless_ar(a, c, n, seed):
    """x_t = c + sum_i a[i] x_{t-tau+i} (a in lag_features column order), random start."""
    tau = len(a)
    x = list(np.random.default_rng(seed).normal(0, 1, tau))
    for _ in range(n - tau):
        x.append(c + sum(a[i] * x[-tau + i] for i in range(tau)))
    return np.array(x)


def test_linear_ar_recovers_noiseless_coefficients_with_intercept():
    a, c = [0.1, -0.5, 1.2], 0.3                   # x_t = 0.3 + 0.1 x_{t-3} - 0.5 x_{t-2} + 1.2 x_{t-1}
    x = _noiseless_ar(a, c, 40, seed=1)
    m = LinearAR(3).fit(x)
    np.testing.assert_allclose(m.coef_, a, rtol=0, atol=1e-9)
    assert abs(m.intercept_ - c) < 1e-9


def test_linear_ar_recovers_noiseless_coefficients_without_intercept():
    a = [-0.2, 0.9]                                # x_t = -0.2 x_{t-2} + 0.9 x_{t-1}
    x = _noiseless_ar(a, 0.0, 30, seed=2)
    m = LinearAR(2, intercept=False).fit(x)
    np.testing.assert_allclose(m.coef_, a, rtol=0, atol=1e-9)
    assert m.intercept_ == 0.0


def test_linear_ar_noiseless_multistep_is_exact():
    a, c = [0.1, -0.5, 1.2], 0.3
    x = _noiseless_ar(a, c, 60, seed=3)
    m = LinearAR(3).fit(x[:30])                    # fitted on the first half only
    P = m.predict_multistep(x, 10)
    assert P.shape == (60 - 3 - 10 + 1, 10)
    for h in range(1, 11):                         # column h-1 of row j is x_{j+3+h-1}
        np.testing.assert_allclose(P[:, h - 1], x[3 + h - 1:3 + h - 1 + P.shape[0]], atol=1e-8)


def test_multistep_feeds_predictions_back_by_hand():
    m = LinearAR(2)
    m.coef_, m.intercept_, m.fitted = np.array([0.5, 0.5]), 0.0, True   # mean of the last two
    x = [0.0, 10.0, 20.0, 30.0, 40.0]
    # row 0 sees (0, 10): 5, then (10, 5): 7.5, then (5, 7.5): 6.25
    np.testing.assert_allclose(m.predict_multistep(x, 3), [[5.0, 7.5, 6.25]])
    # rows 0 and 1 (sees (10, 20): 15, then (20, 15): 17.5)
    np.testing.assert_allclose(m.predict_multistep(x, 2), [[5.0, 7.5], [15.0, 17.5]])
    np.testing.assert_allclose(m.predict(x), [5.0, 15.0, 25.0])
    m.coef_, m.intercept_ = np.array([0.0, 1.0]), 1.0                   # last value + 1
    np.testing.assert_allclose(m.predict_multistep(x, 3), [[11.0, 12.0, 13.0]])


# ----------------------------------------------------------------------------- MLP
def test_mlp_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    m = MLPAR(3, hidden=5, seed=1)
    m.params["b1"][:] = rng.normal(0, 0.3, 5)      # some units active, some not
    W, y = rng.normal(0, 1, (7, 3)), rng.normal(0, 1, 7)
    _, grads = m.loss_and_grad(W, y)
    eps = 1e-6
    for k, p in m.params.items():
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            lp, _ = m.loss_and_grad(W, y)
            p[i] = old - eps
            lm, _ = m.loss_and_grad(W, y)
            p[i] = old
            num[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)


def test_mlp_trains_loss_drops():
    x = sine_series(300, 0.2, seed=4)
    m = MLPAR(4, epochs=8, seed=0)
    f, t = lag_features(x, 4)
    before = m.loss_and_grad(f, t)[0]
    m.fit(x)
    after = float(np.mean((m.predict(x) - t) ** 2))
    assert len(m.loss_history_) == 8
    assert m.loss_history_[-1] < m.loss_history_[0]
    assert after < 0.5 * before
    assert after < 0.08                            # the noise variance is 0.04


# ----------------------------------------------------------------------------- latent RNN
def test_rnn_ar_gradient_matches_finite_differences():
    m = RNNAR(2, hidden_size=3, seed=5)
    rng = np.random.default_rng(1)
    for p in list(m.rnn.params.values()) + list(m.readout.values()):
        p[...] = rng.normal(0, 0.5, p.shape)
    X, Y, h0 = rng.normal(0, 1, 6), rng.normal(0, 1, 6), rng.normal(0, 0.5, (1, 3))
    _, grads, _ = m.loss_and_grad(X, Y, h0)
    params = dict(m.rnn.params, **m.readout)
    assert set(grads) == set(params) == {"W_xh", "W_hh", "b_h", "W_hq", "b_q"}
    eps = 1e-6
    for k, p in params.items():
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            lp = m.loss_and_grad(X, Y, h0)[0]
            p[i] = old - eps
            lm = m.loss_and_grad(X, Y, h0)[0]
            p[i] = old
            num[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)


def test_rnn_ar_runs_on_the_kernels_and_matches_the_reference():
    """RNNAR's layer runs on the C++ ops by default; training and k-step predictions agree with the NumPy ops."""
    x = sine_series(300, seed=2)
    fast = RNNAR(4, hidden_size=8, epochs=20, seed=1).fit(x[:200])
    slow = RNNAR(4, hidden_size=8, epochs=20, seed=1, backend="numpy").fit(x[:200])
    assert fast.rnn.backend == "cpp" and slow.rnn.backend == "numpy"
    np.testing.assert_allclose(fast.loss_history_, slow.loss_history_, rtol=1e-10)
    for k in fast.rnn.params:
        np.testing.assert_allclose(fast.rnn.params[k], slow.rnn.params[k], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.predict_multistep(x, 8), slow.predict_multistep(x, 8), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        RNNAR(4, backend="gpu")


def test_rnn_ar_multistep_by_hand_unrolled():
    """The latent model's k-step prediction against the recurrence written out here."""
    m = RNNAR(2, hidden_size=3, seed=6)
    rng = np.random.default_rng(2)
    for p in list(m.rnn.params.values()) + list(m.readout.values()):
        p[...] = rng.normal(0, 0.5, p.shape)
    m.fitted = True
    P = dict(m.rnn.params, **m.readout)
    step = lambda h, v: np.tanh(v * P["W_xh"][0] + P["b_h"] + h @ P["W_hh"])   # noqa: E731
    out = lambda h: float(h @ P["W_hq"][:, 0] + P["b_q"][0])                   # noqa: E731
    x = rng.normal(0, 1, 8)
    k = 3
    got = m.predict_multistep(x, k)
    assert got.shape == (8 - 2 - k + 1, k)
    for j in range(got.shape[0]):
        h = np.zeros(3)
        for v in x[:j + 2]:                        # read x_0 .. x_{j+tau-1}
            h = step(h, v)
        for c in range(k):
            pred = out(h)
            assert abs(got[j, c] - pred) < 1e-12
            h = step(h, pred)                      # fed back


# ----------------------------------------------------------------------------- causality
@pytest.mark.parametrize("make", [
    lambda x: LinearAR(4).fit(x[:200]),
    lambda x: MLPAR(4, epochs=2).fit(x[:200]),
    lambda x: RNNAR(4, hidden_size=4, epochs=2).fit(x[:200]),
], ids=["linear", "mlp", "rnn"])
def test_multistep_uses_only_observations_up_to_the_start(make):
    x = sine_series(300, 0.2, seed=7)
    m = make(x)
    k, s = 8, 150                                  # change x_s onwards
    y = x.copy()
    y[s:] += 5.0
    P, Q = m.predict_multistep(x, k), m.predict_multistep(y, k)
    last_clean = s - 4                             # rows j with j + tau - 1 < s
    np.testing.assert_array_equal(P[:last_clean + 1], Q[:last_clean + 1])
    assert np.all(np.abs(P[last_clean + 1] - Q[last_clean + 1]) > 0)
    np.testing.assert_array_equal(m.predict(x), m.predict_multistep(x, 1)[:, 0])


# ----------------------------------------------------------------------------- the experiment
def test_sine_series_is_the_books_formula():
    t = np.arange(1, 11)
    np.testing.assert_allclose(sine_series(10, noise=0.0), np.sin(0.01 * t), rtol=0, atol=1e-15)
    x = sine_series(1000, seed=0)
    r = x - np.sin(0.01 * np.arange(1, 1001))
    assert 0.18 < r.std() < 0.22
    np.testing.assert_array_equal(x, sine_series(1000, seed=0))
    assert not np.array_equal(x, sine_series(1000, seed=1))


@pytest.fixture(scope="module")
def book():
    return book_experiment(seed=0)


def test_book_experiment_k_step_error_grows(book):
    assert book["steps"] == (1, 4, 16, 64)
    assert set(book["mse"]) == {"linear", "mlp", "rnn"}
    for name, m in book["mse"].items():
        errs = [m[k] for k in (1, 4, 16, 64)]
        assert all(np.isfinite(errs)), name
        assert errs[0] < errs[1] < errs[2] < errs[3], (name, errs)
        assert errs[3] > 3 * errs[0], (name, errs)


def test_book_experiment_one_step_error_near_the_noise(book):
    x = book["series"]
    truth = x[604:]
    persistence = float(np.mean((x[603:-1] - truth) ** 2))   # predict x_t by x_{t-1}
    for name, m in book["mse"].items():
        assert 0.03 < m[1] < 0.06, (name, m[1])    # the noise variance is 0.2^2 = 0.04
        assert m[1] < persistence, (name, m[1], persistence)


def test_book_experiment_scores_the_same_targets(book):
    x = book["series"]
    for name, preds in book["preds"].items():
        for k, p in preds.items():
            assert p.shape == (1000 - 604,)
            assert abs(np.mean((p - x[604:]) ** 2) - book["mse"][name][k]) < 1e-12
    # the linear model's k-step prediction of x_t recomputed from x_{t-k-3} .. x_{t-k} by hand
    lin = book["models"]["linear"]
    t, k = 700, 4
    w = list(x[t - k - 3:t - k + 1])
    for _ in range(k):
        w.append(float(np.dot(lin.coef_, w[-4:]) + lin.intercept_))
    assert abs(book["preds"]["linear"][4][t - 604] - w[-1]) < 1e-12


def test_latent_rnn_trains_and_reports(book):
    rnn = book["models"]["rnn"]
    assert rnn.loss_history_[-1] < 0.2 * rnn.loss_history_[0]
    assert 0.03 < rnn.loss_history_[-1] < 0.06       # down to about the noise variance
    table = ar.format_table(book)
    assert table.splitlines()[0] == "| model | 1-step MSE | 4-step MSE | 16-step MSE | 64-step MSE |"
    row = [r for r in table.splitlines() if r.startswith("| rnn |")]
    assert len(row) == 1 and f"{book['mse']['rnn'][64]:.4f}" in row[0]


def test_book_experiment_is_reproducible():
    a = book_experiment(seed=3, rnn=False)
    b = book_experiment(seed=3, rnn=False)
    assert a["mse"] == b["mse"]


def test_main_prints_table_and_draws_png(tmp_path, capsys):
    png = tmp_path / "ar.png"
    assert ar.main(["--no-rnn", "--seed", "0", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| linear |" in out and "| mlp |" in out and "| rnn |" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("tau", [0, -1, 1.5, True, "4", None])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        lag_features(np.arange(10.0), tau)
    with pytest.raises(ValueError, match="tau"):
        LinearAR(tau)
    with pytest.raises(ValueError, match="tau"):
        MLPAR(tau)
    with pytest.raises(ValueError, match="tau"):
        RNNAR(tau)


@pytest.mark.parametrize("series, what", [
    ([1.0, 2.0, 3.0, 4.0], "at least 5"),                  # tau = 4 needs tau + 1 points
    ([], "at least 5"),
    ([1.0, np.nan, 3.0, 4.0, 5.0, 6.0], "finite"),
    ([1.0, 2.0, np.inf, 4.0, 5.0, 6.0], "finite"),
    ([1.0, 2.0, 3.0, 4.0, 5.0, -np.inf], "finite"),
    (np.ones((6, 2)), "1-D"),
    (np.float64(3.0), "1-D"),
    (["a", "b", "c", "d", "e", "f"], "real numbers"),
    (np.ones(6, dtype=complex), "real numbers"),
    ([1.0, None, 3.0, 4.0, 5.0, 6.0], "real numbers"),
    (np.ones(6, dtype=bool), "real numbers"),
    ([[1.0, 2.0], [3.0]], "real numbers"),
], ids=["short", "empty", "nan", "inf", "-inf", "2d", "scalar", "strings", "complex", "none",
        "bool", "ragged"])
def test_bad_series(series, what):
    with pytest.raises(ValueError, match=f"series: .*{what}"):
        lag_features(series, 4)
    for model in (LinearAR(4), MLPAR(4, epochs=1), RNNAR(4, epochs=1)):
        with pytest.raises(ValueError, match=f"series: .*{what}"):
            model.fit(series)


def test_bad_prediction_arguments():
    x = sine_series(50, seed=0)
    for model in (LinearAR(4), MLPAR(4, epochs=1), RNNAR(4, epochs=1)):
        with pytest.raises(ValueError, match="fit"):
            model.predict(x)                                 # not fitted yet
        model.fit(x)
        for k in (0, -2, 2.0, True):
            with pytest.raises(ValueError, match="k"):
                model.predict_multistep(x, k)
        with pytest.raises(ValueError, match="series: expected at least 14 points"):
            model.predict_multistep(x[:13], 10)              # tau + k points needed
        with pytest.raises(ValueError, match="series: .*finite"):
            model.predict(np.r_[x[:10], np.nan])
        with pytest.raises(ValueError, match="series: .*1-D"):
            model.predict_multistep(x.reshape(5, 10), 1)
    with pytest.raises(ValueError, match="windows"):
        LinearAR(4).fit(x).predict_windows(np.zeros((3, 5)))


def test_seed_none_and_bad_seeds():
    # RNNAR(seed=None) raised TypeError (None + 1); seeds are validated by name now
    x = sine_series(40, seed=0)
    for make in (lambda s: MLPAR(4, epochs=1, seed=s), lambda s: RNNAR(4, hidden_size=3, epochs=1, seed=s)):
        assert make(None).fit(x).predict(x).shape == (36,)
        for bad in ("x", -1, 1.5, True):
            with pytest.raises(ValueError, match="seed: expected None or an integer"):
                make(bad)


def test_bad_experiment_arguments():
    for steps in ((), None, "4", (4, 0)):
        with pytest.raises(ValueError, match="steps"):
            book_experiment(steps=steps, rnn=False)
    for noise in (np.inf, np.nan, -0.1):
        with pytest.raises(ValueError, match="noise: expected a finite number >= 0"):
            sine_series(10, noise=noise)
    m = LinearAR(2).fit([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="windows: expected real numbers"):
        m.predict_windows([["a", "b"]])


def test_bad_hyperparameters():
    for kwargs, name in [({"hidden": 0}, "hidden"), ({"lr": 0.0}, "lr"), ({"lr": np.nan}, "lr"),
                         ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=name):
            MLPAR(4, **kwargs)
    for kwargs, name in [({"hidden_size": 0}, "hidden_size"), ({"num_steps": 0}, "num_steps"),
                         ({"clip": -1.0}, "clip"), ({"epochs": 1.5}, "epochs")]:
        with pytest.raises(ValueError, match=name):
            RNNAR(4, **kwargs)
    with pytest.raises(ValueError, match="n_train"):
        book_experiment(n_train=996, rnn=False)            # no held-out target left
    with pytest.raises(ValueError, match="n_train"):
        book_experiment(n_train=10, rnn=False)             # a 64-step start before x_0
    with pytest.raises(ValueError, match="noise"):
        sine_series(10, noise=-1.0)
