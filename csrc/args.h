// Conversions of scalar arguments at the binding boundary. A mistyped argument
// raises ValueError naming it; pybind11's own conversion would raise a
// TypeError whose message prints every argument (the whole params dict).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <stdexcept>
#include <string>

namespace fastseq {
namespace py = pybind11;

// A bad argument at the binding boundary; reaches Python as
// fastseq.errors.ArgumentError (a ValueError), the one error type of the
// package's argument checks. The message starts with the argument's name.
struct ArgumentError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Translates ArgumentError for the module (called once, in its init).
inline void register_argument_error() {
    // a strong reference kept for the life of the process, like the module's own types
    static PyObject* type = py::object(py::module_::import("fastseq.errors").attr("ArgumentError")).release().ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ArgumentError& e) {
            PyErr_SetString(type, e.what());
        }
    });
}

inline std::string type_name(const py::handle& o) { return std::string(py::str(py::type::of(o).attr("__name__"))); }

// A Python integer (or anything with __index__) in [0, INT_MAX], as the
// kernels' int; a larger value raises ValueError rather than a TypeError from
// the argument conversion (whose message would print every argument).
inline int count_arg(const py::handle& o, const char* name) {
    const std::string what = std::string(name) + ": expected an integer in [0, " + std::to_string(INT_MAX) + "], got ";
    if (PyBool_Check(o.ptr())) throw fastseq::ArgumentError(what + "a bool");
    PyObject* i = PyNumber_Index(o.ptr());
    if (!i) {
        PyErr_Clear();
        throw fastseq::ArgumentError(what + type_name(o));
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (overflow || v < 0 || v > INT_MAX) throw fastseq::ArgumentError(what + std::string(py::str(o)));
    return int(v);
}

// A real number (a Python float, int, or NumPy scalar); not a bool or a string.
inline double real_arg(const py::handle& o, const char* name) {
    const std::string what = std::string(name) + ": expected a real number, got ";
    if (PyBool_Check(o.ptr()) || PyUnicode_Check(o.ptr()) || PyBytes_Check(o.ptr()))
        throw fastseq::ArgumentError(what + type_name(o));
    const double v = PyFloat_AsDouble(o.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        throw fastseq::ArgumentError(what + type_name(o));
    }
    return v;
}

// Equivalent, not identical, descriptors: np.longlong and np.int64 (or a dtype
// carrying metadata) are distinct objects for the same native type.
inline bool same_dtype(const py::dtype& a, const py::dtype& b) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.ptr(), b.ptr());
}

inline std::string str_arg(const py::handle& o, const char* name) {
    if (!PyUnicode_Check(o.ptr())) throw fastseq::ArgumentError(std::string(name) + ": expected a str, got " + type_name(o));
    return py::cast<std::string>(o);
}

}  // namespace fastseq
