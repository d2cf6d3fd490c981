// The binding layer: check, convert, release the GIL, call a kernel.
// Kernels live in headers free of pybind11 and trust what they are given.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "args.h"
#include "blas.h"
#include "clip.h"
#include "nogil.h"
#include "optim.h"

namespace py = pybind11;

void bind_rnn(py::module_& m);  // csrc/bind_rnn.cpp

namespace {

struct GradView {
    void* ptr;
    std::size_t n;
    bool is_double;
};

// Checks one gradient array for in-place clipping and returns a raw view of it.
GradView grad_view(const py::handle& obj, std::size_t i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    if (!py::isinstance<py::array>(obj))
        throw fastseq::ArgumentError(name + ": expected a NumPy array, got " +
                              fastseq::type_name(obj));
    py::array a = py::reinterpret_borrow<py::array>(obj);
    const bool is_f = fastseq::same_dtype(a.dtype(), py::dtype::of<float>());
    const bool is_d = fastseq::same_dtype(a.dtype(), py::dtype::of<double>());
    if (!is_f && !is_d)
        throw fastseq::ArgumentError(name + ": expected dtype float32 or float64, got " +
                              std::string(py::str(a.dtype())));
    const int flags = a.flags();
    if (!(flags & (py::array::c_style | py::array::f_style)))
        throw fastseq::ArgumentError(name + ": expected a contiguous array (clipping is in place; "
                              "pass np.ascontiguousarray(g) and use the result)");
    if (!a.writeable())
        throw fastseq::ArgumentError(name + ": expected a writeable array (clipping is in place)");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw fastseq::ArgumentError(name + ": expected an aligned array (clipping is in place)");
    return {a.mutable_data(), static_cast<std::size_t>(a.size()), is_d};
}

double clip_grad_norm(const py::handle& grads_o, const py::handle& theta_o) {
    const double theta = fastseq::real_arg(theta_o, "theta");
    if (!py::isinstance<py::iterable>(grads_o))
        throw fastseq::ArgumentError("grads: expected a list of NumPy arrays, got " + fastseq::type_name(grads_o));
    const py::iterable grads = py::reinterpret_borrow<py::iterable>(grads_o);
    if (!(theta > 0) || !std::isfinite(theta))
        throw fastseq::ArgumentError("theta: expected a finite number > 0, got " + std::to_string(theta));
    std::vector<GradView> views;
    std::vector<py::object> keep;  // the arrays stay alive while the GIL is released
    std::size_t i = 0;
    for (py::handle g : grads) {
        views.push_back(grad_view(g, i++));
        keep.push_back(py::reinterpret_borrow<py::object>(g));
    }
    // Memory reached through two arrays (the same array twice, tied weights, or
    // overlapping views) would count twice in the norm and be scaled twice.
    // Contiguous arrays: overlapping byte ranges are shared memory.
    for (std::size_t j = 0; j < views.size(); ++j)
        for (std::size_t k = 0; k < j; ++k) {
            const auto* a0 = static_cast<const char*>(views[k].ptr);
            const auto* b0 = static_cast<const char*>(views[j].ptr);
            const auto* a1 = a0 + views[k].n * (views[k].is_double ? 8 : 4);
            const auto* b1 = b0 + views[j].n * (views[j].is_double ? 8 : 4);
            if (views[k].n && views[j].n && a0 < b1 && b0 < a1)
                throw fastseq::ArgumentError("grads[" + std::to_string(j) + "]: shares memory with grads[" +
                                      std::to_string(k) + "] (clipping in place would scale it twice)");
        }
    double norm;
    {
        fastseq::NoGil nogil;  // see csrc/nogil.h
        double ss = 0;
        for (const auto& v : views)
            ss += v.is_double ? fastseq::sumsq_n(static_cast<const double*>(v.ptr), v.n)
                              : fastseq::sumsq_n(static_cast<const float*>(v.ptr), v.n);
        norm = std::sqrt(ss);
        const double f = fastseq::clip_factor(norm, theta);
        if (f != 1.0)
            for (const auto& v : views) {
                if (v.is_double) fastseq::scale_n(static_cast<double*>(v.ptr), v.n, f);
                else fastseq::scale_n(static_cast<float*>(v.ptr), v.n, static_cast<float>(f));
            }
    }
    return norm;
}

// One array of adam_update, checked: a NumPy array of `dtype`, C-contiguous and aligned (the kernel
// reads it as plain memory), writeable when the update writes it, with `shape` when given.
py::array adam_array(const py::handle& obj, const char* name, const py::dtype& dtype, bool write,
                     const py::array* shape_of) {
    const std::string n(name);
    if (!py::isinstance<py::array>(obj))
        throw fastseq::ArgumentError(n + ": expected a NumPy array, got " + fastseq::type_name(obj));
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!fastseq::same_dtype(a.dtype(), dtype))
        throw fastseq::ArgumentError(n + ": expected dtype " + std::string(py::str(dtype)) + ", got " +
                                     std::string(py::str(a.dtype())));
    if (shape_of) {
        bool same = a.ndim() == shape_of->ndim();
        for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == shape_of->shape(i);
        if (!same)
            throw fastseq::ArgumentError(n + ": expected the shape of p " +
                                         std::string(py::str(shape_of->attr("shape"))) + ", got " +
                                         std::string(py::str(a.attr("shape"))));
    }
    const int flags = a.flags();
    if (!(flags & py::array::c_style))
        throw fastseq::ArgumentError(n + ": expected a C-contiguous array");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw fastseq::ArgumentError(n + ": expected an aligned array");
    if (write && !a.writeable())
        throw fastseq::ArgumentError(n + ": expected a writeable array (the update is in place)");
    return a;
}

std::string num(double x) {  // %g: 1e-08, not to_string's 0.000000
    char b[32];
    std::snprintf(b, sizeof b, "%g", x);
    return b;
}

// A hyperparameter in [lo, hi] (each end open when asked), finite.
double adam_hyper(const py::handle& o, const char* name, double lo, bool lo_open, double hi, bool hi_open) {
    const double x = fastseq::real_arg(o, name);
    if (!std::isfinite(x) || x < lo || (lo_open && x == lo) || x > hi || (hi_open && x == hi))
        throw fastseq::ArgumentError(std::string(name) + ": expected a finite number in " + (lo_open ? "(" : "[") +
                                     num(lo) + ", " + num(hi) + (hi_open ? ")" : "]") + ", got " + num(x));
    return x;
}

// Adam's update of one parameter in place, with AdamW's decoupled weight decay (csrc/optim.h); the
// reference is fastseq/reference/optim.py.
void adam_update(const py::handle& p_o, const py::handle& g_o, const py::handle& m_o, const py::handle& v_o,
                 const py::handle& lr_o, const py::handle& b1_o, const py::handle& b2_o, const py::handle& c1_o,
                 const py::handle& c2_o, const py::handle& eps_o, const py::handle& wd_o) {
    if (!py::isinstance<py::array>(p_o))
        throw fastseq::ArgumentError("p: expected a NumPy array, got " + fastseq::type_name(p_o));
    const py::dtype pd = py::reinterpret_borrow<py::array>(p_o).dtype();
    const bool is_d = fastseq::same_dtype(pd, py::dtype::of<double>());
    if (!is_d && !fastseq::same_dtype(pd, py::dtype::of<float>()))
        throw fastseq::ArgumentError("p: expected dtype float32 or float64, got " + std::string(py::str(pd)));
    const py::dtype f64 = py::dtype::of<double>();
    py::array p = adam_array(p_o, "p", pd, true, nullptr);
    py::array g = adam_array(g_o, "g", pd, false, &p);
    py::array m = adam_array(m_o, "m", f64, true, &p);
    py::array v = adam_array(v_o, "v", f64, true, &p);
    const double inf = std::numeric_limits<double>::infinity();
    // lr = 0 is a rate schedules reach (CosineDecay with final = 0 at the end of the run): a step of 0.
    const double lr = adam_hyper(lr_o, "lr", 0, false, inf, true);
    const double b1 = adam_hyper(b1_o, "b1", 0, false, 1, true);
    const double b2 = adam_hyper(b2_o, "b2", 0, false, 1, true);
    const double c1 = adam_hyper(c1_o, "c1", 0, true, 1, false);
    const double c2 = adam_hyper(c2_o, "c2", 0, true, 1, false);
    const double eps = adam_hyper(eps_o, "eps", 0, true, inf, true);
    const double wd = adam_hyper(wd_o, "weight_decay", 0, false, inf, true);
    // The kernel reads and writes through restrict pointers: the four arrays must be four memories.
    const py::array* arrs[] = {&p, &g, &m, &v};
    const char* names[] = {"p", "g", "m", "v"};
    for (int j = 1; j < 4; ++j)
        for (int k = 0; k < j; ++k) {
            const auto* a0 = static_cast<const char*>(arrs[k]->data());
            const auto* b0 = static_cast<const char*>(arrs[j]->data());
            const auto* a1 = a0 + arrs[k]->nbytes();
            const auto* b1e = b0 + arrs[j]->nbytes();
            if (arrs[k]->size() && arrs[j]->size() && a0 < b1e && b0 < a1)
                throw fastseq::ArgumentError(std::string(names[j]) + ": shares memory with " + names[k]);
        }
    const std::size_t n = std::size_t(p.size());
    const int parts = std::min(fastseq::blas::SingleThreaded::user_threads(), fastseq::usable_cores());
    void* pp = p.mutable_data();  // with the GIL: mutable_data checks the flags and may raise
    const void* gp = g.data();
    double* mp = static_cast<double*>(m.mutable_data());
    double* vp = static_cast<double*>(v.mutable_data());
    fastseq::NoGil nogil;  // see csrc/nogil.h
    if (is_d)
        fastseq::adam_update(static_cast<double*>(pp), static_cast<const double*>(gp), mp, vp, n, lr, b1, b2, c1,
                             c2, eps, wd, parts);
    else
        fastseq::adam_update(static_cast<float*>(pp), static_cast<const float*>(gp), mp, vp, n, lr, b1, b2, c1, c2,
                             eps, wd, parts);
}

py::dict build_info() {
    py::dict d;
    d["blas"] = "scipy-openblas32";
    d["blas_version"] = FASTSEQ_BLAS_VERSION;
    d["blas_config"] = std::string(scipy_openblas_get_config());
    d["blas_threads"] = fastseq::blas::SingleThreaded::user_threads();
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = "unknown";
#endif
    d["isa_flags"] = FASTSEQ_ISA_FLAGS;
    d["build_type"] = FASTSEQ_BUILD_TYPE;
    d["sanitize"] = bool(FASTSEQ_SANITIZE);
    py::list isa;
#ifdef __SSE2__
    isa.append("sse2");
#endif
#ifdef __AVX__
    isa.append("avx");
#endif
#ifdef __AVX2__
    isa.append("avx2");
#endif
#ifdef __FMA__
    isa.append("fma");
#endif
#ifdef __AVX512F__
    isa.append("avx512f");
#endif
#ifdef __ARM_NEON
    isa.append("neon");
#endif
    d["isa"] = isa;     // the baseline the whole module is compiled for
    // What the kernels run: each hot kernel is compiled once per instruction set and picks one at first
    // use (kern::isa_level, lowered by FASTSEQ_ISA), so an AVX2 machine runs AVX2 kernels although "isa"
    // above lists only the portable baseline.
#ifdef FASTSEQ_DISPATCH
    static const char* const kLevels[] = {"baseline", "avx2", "avx512"};
    d["kernel_isa"] = kLevels[fastseq::kern::isa_level()];
#else
    d["kernel_isa"] = "baseline";
#endif
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastseq compiled kernels (private; use the fastseq package)";
    m.def("clip_grad_norm", &clip_grad_norm, py::arg("grads"), py::arg("theta"),
          "Clip in place: g <- min(1, theta/||g||) g over all arrays together; returns ||g|| before clipping.");
    m.def("adam_update", &adam_update, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"),
          py::arg("b1"), py::arg("b2"), py::arg("c1"), py::arg("c2"), py::arg("eps"), py::arg("weight_decay") = 0.0,
          "Adam's update of one parameter in place: m, v (float64, p's shape) and p from the gradient g "
          "(p's dtype); c1, c2 are the bias corrections 1 - b1^t, 1 - b2^t; weight_decay is AdamW's "
          "decoupled decay, p <- p (1 - lr weight_decay) before the step.");
    m.def("build_info", &build_info);
    m.def("set_num_threads", [](const py::handle& no) {
        const int n = fastseq::count_arg(no, "n");
        if (n < 1) throw fastseq::ArgumentError("n: expected a number of threads >= 1, got " + std::to_string(n));
        // the pool's workers are capped by the batch, but a count far beyond the
        // cores only oversubscribes them; OpenBLAS caps it the same way
        fastseq::blas::SingleThreaded::set_user_threads(n);
    }, py::arg("n"));
    m.def("get_num_threads", []() { return fastseq::blas::SingleThreaded::user_threads(); });
    fastseq::register_argument_error();
    bind_rnn(m);
    fastseq::NoGil::install_fork_handler();
    fastseq::blas::SingleThreaded::install_fork_handler();
    py::module_::import("atexit").attr("register")(py::cpp_function([]() { fastseq::NoGil::at_exit(); }));
}
