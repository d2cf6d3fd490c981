// Bindings of the RNN kernels (csrc/rnn.h): check every argument, allocate the
// outputs, release the GIL, run the kernel. Nothing unchecked reaches a kernel:
// a bad argument raises ValueError naming it and what was expected.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "args.h"
#include "nogil.h"
#include "rnn.h"

namespace py = pybind11;
using fastseq::count_arg;
using fastseq::real_arg;
using fastseq::str_arg;
using fastseq::rnn::Act;
using idx = std::ptrdiff_t;

namespace {

std::string shape_str(const std::vector<idx>& s) {
    std::string r = "(";
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (i) r += ", ";
        r += s[i] < 0 ? std::string("*") : std::to_string(s[i]);
    }
    if (s.size() == 1) r += ",";
    return r + ")";
}

std::string shape_of(const py::array& a) {
    std::vector<idx> s(a.shape(), a.shape() + a.ndim());
    return shape_str(s);
}

py::array as_array(const py::handle& obj, const std::string& name) {
    if (!py::isinstance<py::array>(obj))
        throw fastseq::ArgumentError(name + ": expected a NumPy array, got " +
                              std::string(py::str(py::type::of(obj).attr("__name__"))));
    return py::reinterpret_borrow<py::array>(obj);
}

// Equivalent, not identical, descriptors: np.longlong and np.int64 (or a dtype
// carrying metadata) are distinct objects for the same native type.
template <typename T>
bool has_dtype(const py::array& a) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

// The kernels (and the compiler's vectorised loops) assume each element sits at
// an address that is a multiple of its size; a view of a byte buffer at an odd
// offset breaks that, so it is refused rather than read.
void check_layout(const py::array& a, const std::string& name) {
    if (!(a.flags() & py::array::c_style))
        throw fastseq::ArgumentError(name + ": expected a C-contiguous array (use np.ascontiguousarray)");
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw fastseq::ArgumentError(name + ": expected an aligned array (use np.require(a, requirements='CA'))");
}

// shape: the extents; -1 stands for any extent >= 1.
void check_shape(const py::array& a, const std::string& name, const std::vector<idx>& shape) {
    bool ok = a.ndim() == idx(shape.size());
    for (std::size_t i = 0; ok && i < shape.size(); ++i)
        ok = shape[i] < 0 ? a.shape(i) >= 1 : a.shape(i) == shape[i];
    if (!ok) throw fastseq::ArgumentError(name + ": expected shape " + shape_str(shape) + ", got " + shape_of(a));
}

// A C-contiguous, aligned array of element type T with the given shape (-1: any extent >= 1).
template <typename T>
py::array_t<T> checked(const py::handle& obj, const std::string& name, std::vector<idx> shape) {
    py::array a = as_array(obj, name);
    if (!has_dtype<T>(a))
        throw fastseq::ArgumentError(name + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                              " (the model's dtype), got " + std::string(py::str(a.dtype())));
    check_shape(a, name, shape);
    check_layout(a, name);
    return py::reinterpret_borrow<py::array_t<T>>(a);
}

// Token ids: int64, C-contiguous, the given shape, every entry in [0, V).
py::array_t<std::int64_t> checked_ids(const py::handle& obj, const std::string& name, std::vector<idx> shape,
                                      idx V) {
    py::array a = as_array(obj, name);
    if (!has_dtype<std::int64_t>(a))
        throw fastseq::ArgumentError(name + ": expected token ids of dtype int64, got " + std::string(py::str(a.dtype())));
    check_shape(a, name, shape);
    check_layout(a, name);
    auto ids = py::reinterpret_borrow<py::array_t<std::int64_t>>(a);
    const std::int64_t* p = ids.data();
    for (idx i = 0; i < ids.size(); ++i)
        if (p[i] < 0 || p[i] >= V)
            throw fastseq::ArgumentError(name + ": expected token ids in [0, " + std::to_string(V) + "), found " +
                                  std::to_string(p[i]));
    return ids;
}

py::dict params_dict(const py::handle& o) {
    if (!py::isinstance<py::dict>(o))
        throw fastseq::ArgumentError("params: expected a dict of NumPy arrays, got " +
                              std::string(py::str(py::type::of(o).attr("__name__"))));
    return py::reinterpret_borrow<py::dict>(o);
}

Act parse_act(const std::string& s) {
    if (s == "tanh") return Act::Tanh;
    if (s == "relu") return Act::Relu;
    throw fastseq::ArgumentError("nonlinearity: expected 'tanh' or 'relu', got '" + s + "'");
}

py::handle param(const py::dict& params, const char* key) {
    if (!params.contains(key))
        throw fastseq::ArgumentError(std::string("params: missing '") + key + "'");
    return params[key];
}

// The kernels index with 32-bit BLAS integers: every matrix they touch must
// have fewer than 2^31 elements (rows = T*B).
void check_size(idx rows, idx width, const char* what) {
    if (double(rows) * double(std::max<idx>(width, 1)) >= 2147483647.0)
        throw fastseq::ArgumentError(std::string(what) + ": too large for the 32-bit BLAS (T*B*width must be < 2^31)");
}

// The element type of a model is the dtype of its W_hh.
enum class Kind { F32, F64 };
Kind kind_of(const py::dict& params) {
    py::array w = as_array(param(params, "W_hh"), "params['W_hh']");
    if (w.dtype().is(py::dtype::of<float>())) return Kind::F32;
    if (w.dtype().is(py::dtype::of<double>())) return Kind::F64;
    throw fastseq::ArgumentError("params['W_hh']: expected dtype float32 or float64, got " + std::string(py::str(w.dtype())));
}

// H, read off W_hh (H, H): every other parameter's shape is checked against it.
idx hidden_size(const py::dict& params) {
    py::array w = as_array(param(params, "W_hh"), "params['W_hh']");
    if (w.ndim() != 2 || w.shape(0) != w.shape(1) || w.shape(0) < 1)
        throw fastseq::ArgumentError("params['W_hh']: expected shape (H, H) with H >= 1, got " + shape_of(w));
    return w.shape(0);
}

// ---- layer -----------------------------------------------------------------

template <typename T>
struct LayerArgs {
    py::array_t<T> W_xh, W_hh, b_h;
    fastseq::rnn::LayerParams<T> P;
};

template <typename T>
LayerArgs<T> layer_args(const py::dict& params, const std::string& nonlinearity) {
    const idx H = hidden_size(params);
    LayerArgs<T> a;
    a.W_hh = checked<T>(param(params, "W_hh"), "params['W_hh']", {H, H});
    a.W_xh = checked<T>(param(params, "W_xh"), "params['W_xh']", {-1, H});
    a.b_h = checked<T>(param(params, "b_h"), "params['b_h']", {H});
    a.P = {a.W_xh.data(), a.W_hh.data(), a.b_h.data(), int(a.W_xh.shape(0)), int(H), parse_act(nonlinearity)};
    return a;
}

template <typename T>
py::array_t<T> layer_forward_t(const py::handle& Xo, const py::handle& h0o, const py::dict& params,
                               const std::string& nonlinearity, int threads) {
    auto a = layer_args<T>(params, nonlinearity);
    const idx D = a.P.D, H = a.P.H;
    auto X = checked<T>(Xo, "X", {-1, -1, D});
    const idx Tn = X.shape(0), B = X.shape(1);
    auto h0 = checked<T>(h0o, "h0", {B, H});
    check_size(Tn * B, std::max(D, H), "X");
    check_size(H, H, "params['W_hh']");
    py::array_t<T> Hs({Tn, B, H});
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::layer_forward<T>(a.P, int(Tn), int(B), X.data(), h0.data(), Hs.mutable_data(), threads);
    }
    return Hs;
}

template <typename T>
py::tuple layer_backward_t(const py::handle& dHso, const py::handle& Xo, const py::handle& h0o,
                           const py::handle& Hso, const py::dict& params, const std::string& nonlinearity,
                           const py::object& dH_To, const py::object& scaleo, int window, int threads) {
    auto a = layer_args<T>(params, nonlinearity);
    const idx D = a.P.D, H = a.P.H;
    auto X = checked<T>(Xo, "X", {-1, -1, D});
    const idx Tn = X.shape(0), B = X.shape(1);
    auto h0 = checked<T>(h0o, "h0", {B, H});
    auto Hs = checked<T>(Hso, "Hs", {Tn, B, H});
    auto dHs = checked<T>(dHso, "dHs", {Tn, B, H});
    py::array_t<T> dH_T, scale;
    if (!dH_To.is_none()) dH_T = checked<T>(dH_To, "dH_T", {B, H});
    if (!scaleo.is_none()) scale = checked<T>(scaleo, "scale", {Tn, B});
    check_size(Tn * B, std::max(D, H), "X");
    check_size(H, H, "params['W_hh']");
    py::array_t<T> dX({Tn, B, D}), dh0({B, H}), dW_xh({D, H}), dW_hh({H, H}), db_h({H});
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::layer_backward<T>(a.P, int(Tn), int(B), X.data(), h0.data(), Hs.data(), dHs.data(),
                                        dH_To.is_none() ? nullptr : dH_T.data(),
                                        scaleo.is_none() ? nullptr : scale.data(), window, dX.mutable_data(),
                                        dh0.mutable_data(), dW_xh.mutable_data(), dW_hh.mutable_data(),
                                        db_h.mutable_data(), threads);
    }
    py::dict grads;
    grads["W_xh"] = dW_xh;
    grads["W_hh"] = dW_hh;
    grads["b_h"] = db_h;
    return py::make_tuple(dX, dh0, grads);
}

// ---- language model ----------------------------------------------------------

template <typename T>
struct LMArgs {
    py::array_t<T> W_xh, W_hh, b_h, W_hq, b_q;
    fastseq::rnn::LMParams<T> P;
};

template <typename T>
LMArgs<T> lm_args(const py::dict& params, const std::string& nonlinearity) {
    const idx H = hidden_size(params);
    py::array wx = as_array(param(params, "W_xh"), "params['W_xh']");
    if (wx.ndim() != 2 || wx.shape(0) < 1)
        throw fastseq::ArgumentError("params['W_xh']: expected shape (V, " + std::to_string(H) + "), got " + shape_of(wx));
    const idx V = wx.shape(0);
    LMArgs<T> a;
    a.W_hh = checked<T>(param(params, "W_hh"), "params['W_hh']", {H, H});
    a.W_xh = checked<T>(wx, "params['W_xh']", {V, H});
    a.b_h = checked<T>(param(params, "b_h"), "params['b_h']", {H});
    a.W_hq = checked<T>(param(params, "W_hq"), "params['W_hq']", {H, V});
    a.b_q = checked<T>(param(params, "b_q"), "params['b_q']", {V});
    a.P = {a.W_xh.data(), a.W_hh.data(), a.b_h.data(), a.W_hq.data(), a.b_q.data(), int(V), int(H),
           parse_act(nonlinearity)};
    return a;
}

template <typename T>
py::tuple lm_forward_t(const py::handle& Xo, const py::handle& so, const py::dict& params,
                       const std::string& nonlinearity, int threads) {
    auto a = lm_args<T>(params, nonlinearity);
    const idx V = a.P.V, H = a.P.H;
    auto X = checked_ids(Xo, "X", {-1, -1}, V);
    const idx B = X.shape(0), Tn = X.shape(1);
    auto h0 = checked<T>(so, "state", {B, H});
    check_size(Tn * B, std::max(V, H), "X");
    check_size(std::max(H, V), H, "params['W_hh']");
    py::array_t<T> logits({B, Tn, V}), state({B, H});
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::lm_forward<T>(a.P, int(Tn), int(B), X.data(), h0.data(), logits.mutable_data(),
                                    state.mutable_data(), threads);
    }
    return py::make_tuple(logits, state);
}

template <typename T>
py::tuple lm_loss_and_grad_t(const py::handle& Xo, const py::handle& Yo, const py::handle& so,
                             const py::dict& params, const std::string& nonlinearity, const py::object& scaleo,
                             int window, int threads) {
    auto a = lm_args<T>(params, nonlinearity);
    const idx V = a.P.V, H = a.P.H;
    auto X = checked_ids(Xo, "X", {-1, -1}, V);
    const idx B = X.shape(0), Tn = X.shape(1);
    auto Y = checked_ids(Yo, "Y", {B, Tn}, V);
    auto h0 = checked<T>(so, "state", {B, H});
    py::array_t<T> scale;
    if (!scaleo.is_none()) scale = checked<T>(scaleo, "scale", {Tn, B});
    check_size(Tn * B, std::max(V, H), "X");
    check_size(std::max(H, V), H, "params['W_hh']");
    py::array_t<T> gW_xh({V, H}), gW_hh({H, H}), gb_h({H}), gW_hq({H, V}), gb_q({V}), state({B, H});
    double loss;
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::LMGrads<T> g{gW_xh.mutable_data(), gW_hh.mutable_data(), gb_h.mutable_data(),
                                   gW_hq.mutable_data(), gb_q.mutable_data()};
        loss = fastseq::rnn::lm_loss_and_grad<T>(a.P, int(Tn), int(B), X.data(), Y.data(), h0.data(),
                                                 scaleo.is_none() ? nullptr : scale.data(), window, g,
                                                 state.mutable_data(), threads);
    }
    py::dict grads;
    grads["W_xh"] = gW_xh;
    grads["W_hh"] = gW_hh;
    grads["b_h"] = gb_h;
    grads["W_hq"] = gW_hq;
    grads["b_q"] = gb_q;
    return py::make_tuple(loss, grads, state);
}

template <typename T>
py::array_t<std::int32_t> lm_generate_t(const py::handle& prefixo, const py::handle& num_predso, const py::dict& params,
                                        const std::string& nonlinearity, double temperature, const py::handle& top_ko,
                                        const py::object& uniformso, int threads) {
    auto a = lm_args<T>(params, nonlinearity);
    auto prefix = checked_ids(prefixo, "prefix_ids", {-1}, a.P.V);
    check_size(std::max(a.P.H, a.P.V), a.P.H, "params['W_hh']");
    if (prefix.shape(0) >= 2147483647) throw fastseq::ArgumentError("prefix_ids: too long");
    const int num_preds = count_arg(num_predso, "num_preds");
    if (!(temperature >= 0) || !std::isfinite(temperature))
        throw fastseq::ArgumentError("temperature: expected a finite number >= 0, got " + std::to_string(temperature));
    const int top_k = count_arg(top_ko, "top_k");
    py::array_t<double> u;
    const bool sampling = temperature > 0;
    if (sampling) {
        if (uniformso.is_none())
            throw fastseq::ArgumentError("uniforms: expected a float64 array of shape (num_preds,) when temperature > 0");
        u = checked<double>(uniformso, "uniforms", {idx(num_preds)});
        const double* p = u.data();
        for (idx i = 0; i < num_preds; ++i)
            if (!(p[i] >= 0.0 && p[i] < 1.0))
                throw fastseq::ArgumentError("uniforms: expected values in [0, 1), found " + std::to_string(p[i]));
    }
    py::array_t<std::int32_t> out({idx(num_preds)});
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::lm_generate<T>(a.P, prefix.data(), int(prefix.shape(0)), num_preds, temperature, top_k,
                                     sampling ? u.data() : nullptr, out.mutable_data(), threads);
    }
    return out;
}

}  // namespace

void bind_rnn(py::module_& m) {
    m.def(
        "rnn_forward",
        [](const py::handle& X, const py::handle& h0, const py::handle& pd, const py::handle& nlo,
           const py::handle& th) {
            const py::dict params = params_dict(pd);
            const std::string nl = str_arg(nlo, "nonlinearity");
            const int threads = count_arg(th, "threads");
            return kind_of(params) == Kind::F32 ? layer_forward_t<float>(X, h0, params, nl, threads).cast<py::object>()
                                                : layer_forward_t<double>(X, h0, params, nl, threads).cast<py::object>();
        },
        py::arg("X"), py::arg("h0"), py::arg("params"), py::arg("nonlinearity"), py::arg("threads") = 0,
        "Layer forward: Hs (T, B, H) from X (T, B, D) and h0 (B, H).");
    m.def(
        "rnn_backward",
        [](const py::handle& dHs, const py::handle& X, const py::handle& h0, const py::handle& Hs,
           const py::handle& pd, const py::handle& nlo, const py::object& dH_T, const py::object& scale,
           const py::handle& win, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const std::string nl = str_arg(nlo, "nonlinearity");
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
            return kind_of(params) == Kind::F32
                       ? layer_backward_t<float>(dHs, X, h0, Hs, params, nl, dH_T, scale, window, threads)
                       : layer_backward_t<double>(dHs, X, h0, Hs, params, nl, dH_T, scale, window, threads);
        },
        py::arg("dHs"), py::arg("X"), py::arg("h0"), py::arg("Hs"), py::arg("params"), py::arg("nonlinearity"),
        py::arg("dH_T"), py::arg("scale"), py::arg("window"), py::arg("threads") = 0,
        "Layer backward under the BPTT plan (scale, window): (dX, dh0, grads).");
    m.def(
        "lm_forward",
        [](const py::handle& X, const py::handle& state, const py::handle& pd, const py::handle& nlo,
           const py::handle& th) {
            const py::dict params = params_dict(pd);
            const std::string nl = str_arg(nlo, "nonlinearity");
            const int threads = count_arg(th, "threads");
            return kind_of(params) == Kind::F32 ? lm_forward_t<float>(X, state, params, nl, threads)
                                                : lm_forward_t<double>(X, state, params, nl, threads);
        },
        py::arg("X"), py::arg("state"), py::arg("params"), py::arg("nonlinearity"), py::arg("threads") = 0,
        "LM inference: (logits (B, T, V), state (B, H)) from ids X (B, T).");
    m.def(
        "lm_loss_and_grad",
        [](const py::handle& X, const py::handle& Y, const py::handle& state, const py::handle& pd,
           const py::handle& nlo, const py::object& scale, const py::handle& win, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const std::string nl = str_arg(nlo, "nonlinearity");
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
            return kind_of(params) == Kind::F32
                       ? lm_loss_and_grad_t<float>(X, Y, state, params, nl, scale, window, threads)
                       : lm_loss_and_grad_t<double>(X, Y, state, params, nl, scale, window, threads);
        },
        py::arg("X"), py::arg("Y"), py::arg("state"), py::arg("params"), py::arg("nonlinearity"), py::arg("scale"),
        py::arg("window"), py::arg("threads") = 0,
        "LM training step: (mean loss, grads, final state) for ids X, targets Y (B, T).");
    m.def(
        "lm_generate",
        [](const py::handle& prefix, const py::handle& num_preds, const py::handle& pd, const py::handle& nlo,
           const py::handle& temp, const py::handle& top_k, const py::object& uniforms, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const std::string nl = str_arg(nlo, "nonlinearity");
            const double temperature = real_arg(temp, "temperature");
            const int threads = count_arg(th, "threads");
            return kind_of(params) == Kind::F32
                       ? lm_generate_t<float>(prefix, num_preds, params, nl, temperature, top_k, uniforms, threads)
                       : lm_generate_t<double>(prefix, num_preds, params, nl, temperature, top_k, uniforms, threads);
        },
        py::arg("prefix_ids"), py::arg("num_preds"), py::arg("params"), py::arg("nonlinearity"),
        py::arg("temperature"), py::arg("top_k"), py::arg("uniforms"), py::arg("threads") = 0,
        "Generation from a prefix: int32 ids (num_preds,).");
}
