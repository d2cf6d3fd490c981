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

template <typename T>
bool has_dtype(const py::array& a) {
    return fastseq::same_dtype(a.dtype(), py::dtype::of<T>());
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
    if (fastseq::same_dtype(w.dtype(), py::dtype::of<float>())) return Kind::F32;
    if (fastseq::same_dtype(w.dtype(), py::dtype::of<double>())) return Kind::F64;
    throw fastseq::ArgumentError("params['W_hh']: expected dtype float32 or float64, got " + std::string(py::str(w.dtype())));
}

// ---- cells and stacks --------------------------------------------------------

using fastseq::rnn::Buffer;
using fastseq::rnn::CellTag;
using fastseq::rnn::LayerG;
using fastseq::rnn::LayerW;

// What the binding needs to know of a cell: its shapes.
struct CellInfo {
    std::string name;
    int G, P, X;
    bool alias, b_hn;
};

CellInfo cell_info(const std::string& name) {
    CellInfo ci{name, 0, 0, 0, false, false};
    const bool known = fastseq::rnn::with_cell(name, [&](auto tag, int) {
        using C = typename decltype(tag)::template type<float>;
        ci = CellInfo{name, C::G, C::P, C::X, C::kAliasZH, C::kSepGh};
    });
    if (!known) {
        std::string names;
#define FASTSEQ_CELL_NAME(NAME, TMPL, VARIANT) names += std::string(names.empty() ? "'" : ", '") + NAME + "'";
        FASTSEQ_CELLS(FASTSEQ_CELL_NAME)
#undef FASTSEQ_CELL_NAME
        throw fastseq::ArgumentError("cell: expected one of " + names + ", got '" + name + "'");
    }
    return ci;
}

std::string suffix(int l) { return l ? "_l" + std::to_string(l) : std::string(); }
std::string pname(const char* base, int l) { return "params['" + std::string(base) + suffix(l) + "']"; }
py::handle lparam(const py::dict& params, const char* base, int l) {
    const std::string key = std::string(base) + suffix(l);
    if (!params.contains(key)) throw fastseq::ArgumentError("params: missing '" + key + "'");
    return params[py::str(key)];
}

// The layers present: W_hh, W_hh_l1, ... without a gap (at most max_layers).
int num_layers(const py::dict& params, int max_layers) {
    int L = 1;
    while (L < max_layers && params.contains(py::str("W_hh" + suffix(L)))) ++L;
    return L;
}

// H, read off W_hh (H, G*H): every other parameter's shape is checked against it.
idx hidden_size(const py::dict& params, const CellInfo& ci) {
    py::array w = as_array(param(params, "W_hh"), "params['W_hh']");
    if (w.ndim() != 2 || w.shape(0) < 1 || w.shape(1) != ci.G * w.shape(0))
        throw fastseq::ArgumentError("params['W_hh']: expected shape (H, " + std::string(ci.G > 1 ? std::to_string(ci.G) + "*H" : "H") +
                                     ") with H >= 1 for the cell '" + ci.name + "', got " + shape_of(w));
    return w.shape(0);
}

// A stack's checked parameters; D0 = layer 0's input size, -1 for any.
template <typename T>
struct StackArgs {
    std::vector<py::array_t<T>> keep;
    std::vector<LayerW<T>> layers;
    int H = 0, L = 0;
};

template <typename T>
StackArgs<T> stack_args(const py::dict& params, const CellInfo& ci, idx D0, int max_layers) {
    StackArgs<T> a;
    const idx H = hidden_size(params, ci), GH = ci.G * H;
    a.H = int(H);
    a.L = num_layers(params, max_layers);
    for (int l = 0; l < a.L; ++l) {
        auto W_xh = checked<T>(lparam(params, "W_xh", l), pname("W_xh", l), {l ? H : D0, GH});
        auto W_hh = checked<T>(lparam(params, "W_hh", l), pname("W_hh", l), {H, GH});
        auto b_h = checked<T>(lparam(params, "b_h", l), pname("b_h", l), {GH});
        LayerW<T> w{W_xh.data(), W_hh.data(), b_h.data(), nullptr, int(W_xh.shape(0))};
        a.keep.insert(a.keep.end(), {W_xh, W_hh, b_h});
        if (ci.b_hn) {
            auto b_hn = checked<T>(lparam(params, "b_hn", l), pname("b_hn", l), {H});
            w.b_hn = b_hn.data();
            a.keep.push_back(b_hn);
        }
        check_size(std::max(idx(w.D), H), GH, pname("W_xh", l).c_str());
        a.layers.push_back(w);
    }
    return a;
}

// The state's shape: (B, H) when P*L == 1, else (P*L, B, H).
std::vector<idx> state_shape(const CellInfo& ci, int L, idx B, idx H) {
    if (ci.P * L == 1) return {B, H};
    return {idx(ci.P) * L, B, H};
}

template <typename T>
py::array_t<T> optional_mask(const py::object& o, const char* name, std::vector<idx> shape) {
    if (o.is_none()) return py::array_t<T>();
    return checked<T>(o, name, shape);
}
template <typename T>
const T* ptr_or_null(const py::object& o, const py::array_t<T>& a) {
    return o.is_none() ? nullptr : a.data();
}

template <typename T>
py::dict grads_dict(const StackArgs<T>& a, const CellInfo& ci, std::vector<LayerG<T>>& g, idx D0) {
    py::dict grads;
    const idx H = a.H, GH = ci.G * H;
    g.clear();
    for (int l = 0; l < a.L; ++l) {
        py::array_t<T> W_xh({l ? H : D0, GH}), W_hh({H, GH}), b_h({GH});
        LayerG<T> x{W_xh.mutable_data(), W_hh.mutable_data(), b_h.mutable_data(), nullptr};
        grads[py::str("W_xh" + suffix(l))] = W_xh;
        grads[py::str("W_hh" + suffix(l))] = W_hh;
        grads[py::str("b_h" + suffix(l))] = b_h;
        if (ci.b_hn) {
            py::array_t<T> b_hn({H});
            x.b_hn = b_hn.mutable_data();
            grads[py::str("b_hn" + suffix(l))] = b_hn;
        }
        g.push_back(x);
    }
    return grads;
}

// Argument names in messages: the contract's, or those of the Elman-only calls.
struct Names {
    const char *X, *state0, *Hs, *dY, *dsT;
};
const Names kNames{"cache (X)", "state0", "cache (Hs)", "dY", "dstate_T"};
const Names kElmanNames{"X", "h0", "Hs", "dHs", "dH_T"};

// The cache of a layer's forward: (Hs (L, T, B, H), Z (L, T, B, G*H) or None,
// E (L, X, T, B, H) or None, Xin (L-1, T, B, H) or None, X, state0, m_layers or None).
template <typename T>
py::tuple cell_forward_t(const CellInfo& ci, const py::handle& Xo, const py::handle& so, const py::dict& params,
                         const py::object& mlo, int threads, int max_layers, const Names& nm = kNames) {
    auto a = stack_args<T>(params, ci, -1, max_layers);
    const idx H = a.H, L = a.L, D = a.layers[0].D, GH = ci.G * H;
    auto X = checked<T>(Xo, "X", {-1, -1, D});
    const idx Tn = X.shape(0), B = X.shape(1);
    auto s0 = checked<T>(so, nm.state0, state_shape(ci, int(L), B, H));
    auto ml = optional_mask<T>(mlo, "masks (m_layers)", {L - 1, Tn, B, H});
    check_size(Tn * B, std::max({D, H, GH}), "X");
    const bool drop = !mlo.is_none() && L > 1;
    py::array_t<T> Hs({L, Tn, B, H}), st(state_shape(ci, int(L), B, H));
    py::object Z = py::none(), E = py::none(), Xin = py::none();
    py::array_t<T> Za, Ea, Xa;
    if (!ci.alias) Z = Za = py::array_t<T>({L, Tn, B, GH});
    if (ci.X) E = Ea = py::array_t<T>({L, idx(ci.X), Tn, B, H});
    if (drop) Xin = Xa = py::array_t<T>({L - 1, Tn, B, H});
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::StackBufs<T> S{Hs.mutable_data(), ci.alias ? nullptr : Za.mutable_data(),
                                     ci.X ? Ea.mutable_data() : nullptr, drop ? Xa.mutable_data() : nullptr};
        fastseq::rnn::with_cell(ci.name, [&](auto tag, int variant) {
            using C = typename decltype(tag)::template type<T>;
            fastseq::rnn::stack_forward<T, C>(a.layers, int(H), variant, int(Tn), int(B), X.data(), s0.data(),
                                              drop ? ml.data() : nullptr, S, st.mutable_data(), threads);
        });
    }
    py::array_t<T> Y({Tn, B, H}, Hs.mutable_data() + (L - 1) * Tn * B * H, Hs);  // a view of the top layer
    py::tuple cache = py::make_tuple(Hs, Z, E, Xin, X, s0, drop ? py::object(ml) : py::none());
    return py::make_tuple(Y, st, cache);
}

template <typename T>
py::tuple cell_backward_t(const CellInfo& ci, const py::handle& dYo, const py::object& dsTo, const py::handle& co,
                          const py::dict& params, const py::object& scaleo, int window, int threads, int max_layers,
                          const Names& nm = kNames) {
    auto a = stack_args<T>(params, ci, -1, max_layers);
    const idx H = a.H, L = a.L, D = a.layers[0].D, GH = ci.G * H;
    if (!py::isinstance<py::tuple>(co) || py::len(co) != 7)
        throw fastseq::ArgumentError("cache: expected the cache returned by the C++ rnn_forward");
    const py::tuple cache = py::reinterpret_borrow<py::tuple>(co);
    auto X = checked<T>(cache[4], nm.X, {-1, -1, D});
    const idx Tn = X.shape(0), B = X.shape(1);
    const auto sshape = state_shape(ci, int(L), B, H);
    auto s0 = checked<T>(cache[5], &nm == &kNames ? "cache (state0)" : nm.state0, sshape);
    auto Hs = checked<T>(cache[0], nm.Hs, {L, Tn, B, H});
    py::array_t<T> Z, E, Xin, ml;
    if (!ci.alias) Z = checked<T>(cache[1], "cache (Z)", {L, Tn, B, GH});
    if (ci.X) E = checked<T>(cache[2], "cache (E)", {L, idx(ci.X), Tn, B, H});
    const bool drop = !py::object(cache[6]).is_none();
    if (drop) {
        if (L < 2) throw fastseq::ArgumentError("cache: dropout masks for a single layer");
        Xin = checked<T>(cache[3], "cache (Xin)", {L - 1, Tn, B, H});
        ml = checked<T>(cache[6], "cache (m_layers)", {L - 1, Tn, B, H});
    }
    auto dY = checked<T>(dYo, nm.dY, {Tn, B, H});
    py::array_t<T> dsT, scale;
    if (!dsTo.is_none()) dsT = checked<T>(dsTo, nm.dsT, sshape);
    if (!scaleo.is_none()) scale = checked<T>(scaleo, "scale", {Tn, B});
    check_size(Tn * B, std::max({D, H, GH}), "X");
    py::array_t<T> dX({Tn, B, D}), ds0(sshape);
    std::vector<LayerG<T>> g;
    py::dict grads = grads_dict(a, ci, g, D);
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::StackBufs<T> S{const_cast<T*>(Hs.data()), ci.alias ? nullptr : const_cast<T*>(Z.data()),
                                     ci.X ? const_cast<T*>(E.data()) : nullptr,
                                     drop ? const_cast<T*>(Xin.data()) : nullptr};
        fastseq::rnn::with_cell(ci.name, [&](auto tag, int variant) {
            using C = typename decltype(tag)::template type<T>;
            fastseq::rnn::stack_backward<T, C>(a.layers, int(H), variant, int(Tn), int(B), X.data(), s0.data(),
                                               drop ? ml.data() : nullptr, S, dY.data(),
                                               dsTo.is_none() ? nullptr : dsT.data(),
                                               scaleo.is_none() ? nullptr : scale.data(), window,
                                               dX.mutable_data(), ds0.mutable_data(), g, threads);
        });
    }
    return py::make_tuple(dX, ds0, grads);
}

// ---- language model ----------------------------------------------------------

template <typename T>
struct LMArgs {
    StackArgs<T> s;
    py::array_t<T> W_hq, b_q;
    fastseq::rnn::LMParams<T> P;
};

template <typename T>
LMArgs<T> lm_args(const py::dict& params, const CellInfo& ci, int max_layers) {
    const idx H = hidden_size(params, ci);
    py::array wx = as_array(param(params, "W_xh"), "params['W_xh']");
    if (wx.ndim() != 2 || wx.shape(0) < 1)
        throw fastseq::ArgumentError("params['W_xh']: expected shape (V, " + std::to_string(ci.G * H) + "), got " +
                                     shape_of(wx));
    const idx V = wx.shape(0);
    LMArgs<T> a;
    a.s = stack_args<T>(params, ci, V, max_layers);
    a.W_hq = checked<T>(param(params, "W_hq"), "params['W_hq']", {H, V});
    a.b_q = checked<T>(param(params, "b_q"), "params['b_q']", {V});
    check_size(std::max(H, V), std::max(H, V), "params['W_hq']");
    a.P = fastseq::rnn::LMParams<T>{a.s.layers, a.W_hq.data(), a.b_q.data(), int(V), int(H), 0};
    fastseq::rnn::with_cell(ci.name, [&](auto, int variant) { a.P.variant = variant; });
    return a;
}

template <typename T>
py::tuple lm_forward_t(const CellInfo& ci, const py::handle& Xo, const py::handle& so, const py::dict& params,
                       int threads, int max_layers) {
    auto a = lm_args<T>(params, ci, max_layers);
    const idx V = a.P.V, H = a.P.H, L = a.s.L;
    auto X = checked_ids(Xo, "X", {-1, -1}, V);
    const idx B = X.shape(0), Tn = X.shape(1);
    const auto sshape = state_shape(ci, int(L), B, H);
    auto s0 = checked<T>(so, "state", sshape);
    check_size(Tn * B, std::max({V, H * ci.G}), "X");
    py::array_t<T> logits({B, Tn, V}), state(sshape);
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::with_cell(ci.name, [&](auto tag, int) {
            using C = typename decltype(tag)::template type<T>;
            fastseq::rnn::lm_forward<T, C>(a.P, int(Tn), int(B), X.data(), s0.data(), logits.mutable_data(),
                                           state.mutable_data(), threads);
        });
    }
    return py::make_tuple(logits, state);
}

template <typename T>
py::tuple lm_loss_and_grad_t(const CellInfo& ci, const py::handle& Xo, const py::handle& Yo, const py::handle& so,
                             const py::dict& params, const py::object& scaleo, int window, const py::object& mio,
                             const py::object& mlo, const py::object& moo, int threads, int max_layers) {
    auto a = lm_args<T>(params, ci, max_layers);
    const idx V = a.P.V, H = a.P.H, L = a.s.L, GH = ci.G * H;
    auto X = checked_ids(Xo, "X", {-1, -1}, V);
    const idx B = X.shape(0), Tn = X.shape(1);
    auto Y = checked_ids(Yo, "Y", {B, Tn}, V);
    const auto sshape = state_shape(ci, int(L), B, H);
    auto s0 = checked<T>(so, "state", sshape);
    py::array_t<T> scale;
    if (!scaleo.is_none()) scale = checked<T>(scaleo, "scale", {Tn, B});
    auto mi = optional_mask<T>(mio, "masks (m_in)", {Tn, B, GH});
    auto ml = optional_mask<T>(mlo, "masks (m_layers)", {L - 1, Tn, B, H});
    auto mo = optional_mask<T>(moo, "masks (m_out)", {Tn, B, H});
    check_size(Tn * B, std::max({V, GH}), "X");
    fastseq::rnn::LMMasks<T> mk;
    mk.in = ptr_or_null(mio, mi);
    mk.layers = L > 1 ? ptr_or_null(mlo, ml) : nullptr;
    mk.out = ptr_or_null(moo, mo);
    std::vector<LayerG<T>> gl;
    py::dict grads = grads_dict(a.s, ci, gl, V);
    py::array_t<T> gW_hq({H, V}), gb_q({V}), state(sshape);
    grads["W_hq"] = gW_hq;
    grads["b_q"] = gb_q;
    double loss;
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        fastseq::rnn::LMGrads<T> g{gl, gW_hq.mutable_data(), gb_q.mutable_data()};
        fastseq::rnn::with_cell(ci.name, [&](auto tag, int) {
            using C = typename decltype(tag)::template type<T>;
            loss = fastseq::rnn::lm_loss_and_grad<T, C>(a.P, mk, int(Tn), int(B), X.data(), Y.data(), s0.data(),
                                                        scaleo.is_none() ? nullptr : scale.data(), window, g,
                                                        state.mutable_data(), threads);
        });
    }
    return py::make_tuple(loss, grads, state);
}

template <typename T>
py::array_t<std::int32_t> lm_generate_t(const CellInfo& ci, const py::handle& prefixo, const py::handle& num_predso,
                                        const py::dict& params, double temperature, const py::handle& top_ko,
                                        const py::object& uniformso, int threads, int max_layers) {
    auto a = lm_args<T>(params, ci, max_layers);
    auto prefix = checked_ids(prefixo, "prefix_ids", {-1}, a.P.V);
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
        fastseq::rnn::with_cell(ci.name, [&](auto tag, int) {
            using C = typename decltype(tag)::template type<T>;
            fastseq::rnn::lm_generate<T, C>(a.P, prefix.data(), int(prefix.shape(0)), num_preds, temperature, top_k,
                                            sampling ? u.data() : nullptr, out.mutable_data(), threads);
        });
    }
    return out;
}

// The Elman-only entry points of before the cells: 'nonlinearity' names the cell, one layer.
CellInfo elman_info(const py::handle& nlo) {
    const std::string nl = str_arg(nlo, "nonlinearity");
    if (nl != "tanh" && nl != "relu")
        throw fastseq::ArgumentError("nonlinearity: expected 'tanh' or 'relu', got '" + nl + "'");
    return cell_info("rnn_" + nl);
}

CellInfo cell_arg(const py::handle& o) { return cell_info(str_arg(o, "cell")); }

// The masks tuple (m_in, m_layers, m_out) or None.
std::vector<py::object> masks_arg(const py::object& o) {
    std::vector<py::object> m(3, py::none());
    if (o.is_none()) return m;
    if (!py::isinstance<py::tuple>(o) || py::len(o) != 3)
        throw fastseq::ArgumentError("masks: expected None or a tuple (m_in, m_layers, m_out)");
    const py::tuple t = py::reinterpret_borrow<py::tuple>(o);
    for (int i = 0; i < 3; ++i) m[i] = t[i];
    return m;
}

constexpr int kAnyDepth = 1 << 20;

}  // namespace

#define FASTSEQ_BY_DTYPE(params, CALL)                                                      \
    (kind_of(params) == Kind::F32 ? py::object(CALL(float)) : py::object(CALL(double)))

void bind_rnn(py::module_& m) {
    // ---- the contract's calls, any registered cell and depth
    m.def(
        "cell_forward",
        [](const py::handle& c, const py::handle& X, const py::handle& s0, const py::handle& pd,
           const py::object& masks, const py::handle& th) {
            const CellInfo ci = cell_arg(c);
            const py::dict params = params_dict(pd);
            const auto mk = masks_arg(masks);
            if (!mk[0].is_none() || !mk[2].is_none())
                throw fastseq::ArgumentError("masks: m_in and m_out belong to the language model; expected None");
            const int threads = count_arg(th, "threads");
#define CALL(T) cell_forward_t<T>(ci, X, s0, params, mk[1], threads, kAnyDepth)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("cell"), py::arg("X"), py::arg("state0"), py::arg("params"), py::arg("masks") = py::none(),
        py::arg("threads") = 0, "Stacked layer forward: (Y (T, B, H), state_T, cache).");
    m.def(
        "cell_backward",
        [](const py::handle& c, const py::handle& dY, const py::object& dsT, const py::handle& cache,
           const py::handle& pd, const py::object& scale, const py::handle& win, const py::handle& th) {
            const CellInfo ci = cell_arg(c);
            const py::dict params = params_dict(pd);
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
#define CALL(T) cell_backward_t<T>(ci, dY, dsT, cache, params, scale, window, threads, kAnyDepth)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("cell"), py::arg("dY"), py::arg("dstate_T"), py::arg("cache"), py::arg("params"), py::arg("scale"),
        py::arg("window"), py::arg("threads") = 0, "Stacked layer backward under the plan: (dX, dstate0, grads).");
    m.def(
        "cell_lm_forward",
        [](const py::handle& c, const py::handle& X, const py::handle& s0, const py::handle& pd, const py::handle& th) {
            const CellInfo ci = cell_arg(c);
            const py::dict params = params_dict(pd);
            const int threads = count_arg(th, "threads");
#define CALL(T) lm_forward_t<T>(ci, X, s0, params, threads, kAnyDepth)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("cell"), py::arg("ids"), py::arg("state0"), py::arg("params"), py::arg("threads") = 0,
        "LM inference: (logits (B, T, V), state_T).");
    m.def(
        "cell_lm_loss_and_grad",
        [](const py::handle& c, const py::handle& X, const py::handle& Y, const py::handle& s0, const py::handle& pd,
           const py::object& scale, const py::handle& win, const py::object& masks, const py::handle& th) {
            const CellInfo ci = cell_arg(c);
            const py::dict params = params_dict(pd);
            const auto mk = masks_arg(masks);
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
#define CALL(T) lm_loss_and_grad_t<T>(ci, X, Y, s0, params, scale, window, mk[0], mk[1], mk[2], threads, kAnyDepth)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("cell"), py::arg("ids"), py::arg("Y"), py::arg("state0"), py::arg("params"), py::arg("scale"),
        py::arg("window"), py::arg("masks") = py::none(), py::arg("threads") = 0,
        "LM training step: (mean loss, grads, state_T).");
    m.def(
        "cell_lm_generate",
        [](const py::handle& c, const py::handle& prefix, const py::handle& num_preds, const py::handle& pd,
           const py::handle& temp, const py::handle& top_k, const py::object& uniforms, const py::handle& th) {
            const CellInfo ci = cell_arg(c);
            const py::dict params = params_dict(pd);
            const double temperature = real_arg(temp, "temperature");
            const int threads = count_arg(th, "threads");
#define CALL(T) lm_generate_t<T>(ci, prefix, num_preds, params, temperature, top_k, uniforms, threads, kAnyDepth)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("cell"), py::arg("prefix_ids"), py::arg("num_preds"), py::arg("params"), py::arg("temperature"),
        py::arg("top_k"), py::arg("uniforms"), py::arg("threads") = 0, "Generation from a prefix: int32 ids.");

    // ---- the Elman-only calls of before (one layer; 'nonlinearity' names the cell)
    m.def(
        "rnn_forward",
        [](const py::handle& X, const py::handle& h0, const py::handle& pd, const py::handle& nlo,
           const py::handle& th) {
            const py::dict params = params_dict(pd);
            const CellInfo ci = elman_info(nlo);
            const int threads = count_arg(th, "threads");
#define CALL(T) cell_forward_t<T>(ci, X, h0, params, py::none(), threads, 1, kElmanNames)[0]
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("X"), py::arg("h0"), py::arg("params"), py::arg("nonlinearity"), py::arg("threads") = 0,
        "Layer forward: Hs (T, B, H) from X (T, B, D) and h0 (B, H).");
    m.def(
        "rnn_backward",
        [](const py::handle& dHs, const py::handle& X, const py::handle& h0, const py::handle& Hs,
           const py::handle& pd, const py::handle& nlo, const py::object& dH_T, const py::object& scale,
           const py::handle& win, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const CellInfo ci = elman_info(nlo);
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
            // the Elman cache is Hs alone, as one layer of (L, T, B, H)
            py::object Hs4 = py::reinterpret_borrow<py::object>(Hs);
            if (py::isinstance<py::array>(Hs)) {
                py::array a = py::reinterpret_borrow<py::array>(Hs);
                if (a.ndim() == 3) Hs4 = a.attr("reshape")(py::make_tuple(1, a.shape(0), a.shape(1), a.shape(2)));
                else throw fastseq::ArgumentError("Hs: expected shape (T, B, H), got " + shape_of(a));
            }
            // checked as X's dtype and shape before the cache is read
            py::tuple cache = py::make_tuple(Hs4, py::none(), py::none(), py::none(), X, h0, py::none());
#define CALL(T) cell_backward_t<T>(ci, dHs, dH_T, cache, params, scale, window, threads, 1, kElmanNames)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("dHs"), py::arg("X"), py::arg("h0"), py::arg("Hs"), py::arg("params"), py::arg("nonlinearity"),
        py::arg("dH_T"), py::arg("scale"), py::arg("window"), py::arg("threads") = 0,
        "Layer backward under the BPTT plan (scale, window): (dX, dh0, grads).");
    m.def(
        "lm_forward",
        [](const py::handle& X, const py::handle& state, const py::handle& pd, const py::handle& nlo,
           const py::handle& th) {
            const py::dict params = params_dict(pd);
            const CellInfo ci = elman_info(nlo);
            const int threads = count_arg(th, "threads");
#define CALL(T) lm_forward_t<T>(ci, X, state, params, threads, 1)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("X"), py::arg("state"), py::arg("params"), py::arg("nonlinearity"), py::arg("threads") = 0,
        "LM inference: (logits (B, T, V), state (B, H)) from ids X (B, T).");
    m.def(
        "lm_loss_and_grad",
        [](const py::handle& X, const py::handle& Y, const py::handle& state, const py::handle& pd,
           const py::handle& nlo, const py::object& scale, const py::handle& win, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const CellInfo ci = elman_info(nlo);
            const int window = count_arg(win, "window"), threads = count_arg(th, "threads");
#define CALL(T) lm_loss_and_grad_t<T>(ci, X, Y, state, params, scale, window, py::none(), py::none(), py::none(), threads, 1)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("X"), py::arg("Y"), py::arg("state"), py::arg("params"), py::arg("nonlinearity"), py::arg("scale"),
        py::arg("window"), py::arg("threads") = 0,
        "LM training step: (mean loss, grads, final state) for ids X, targets Y (B, T).");
    m.def(
        "lm_generate",
        [](const py::handle& prefix, const py::handle& num_preds, const py::handle& pd, const py::handle& nlo,
           const py::handle& temp, const py::handle& top_k, const py::object& uniforms, const py::handle& th) {
            const py::dict params = params_dict(pd);
            const CellInfo ci = elman_info(nlo);
            const double temperature = real_arg(temp, "temperature");
            const int threads = count_arg(th, "threads");
#define CALL(T) lm_generate_t<T>(ci, prefix, num_preds, params, temperature, top_k, uniforms, threads, 1)
            return FASTSEQ_BY_DTYPE(params, CALL);
#undef CALL
        },
        py::arg("prefix_ids"), py::arg("num_preds"), py::arg("params"), py::arg("nonlinearity"),
        py::arg("temperature"), py::arg("top_k"), py::arg("uniforms"), py::arg("threads") = 0,
        "Generation from a prefix: int32 ids (num_preds,).");
}
