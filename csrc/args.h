// Conversions of scalar arguments at the binding boundary. A mistyped argument
// raises ValueError naming it; pybind11's own conversion would raise a
// TypeError whose message prints every argument (the whole params dict).
#pragma once
#include <pybind11/pybind11.h>

#include <climits>
#include <string>

namespace fastseq {
namespace py = pybind11;

inline std::string type_name(const py::handle& o) { return std::string(py::str(py::type::of(o).attr("__name__"))); }

// A Python integer (or anything with __index__) in [0, INT_MAX], as the
// kernels' int; a larger value raises ValueError rather than a TypeError from
// the argument conversion (whose message would print every argument).
inline int count_arg(const py::handle& o, const char* name) {
    const std::string what = std::string(name) + ": expected an integer in [0, " + std::to_string(INT_MAX) + "], got ";
    if (PyBool_Check(o.ptr())) throw py::value_error(what + "a bool");
    PyObject* i = PyNumber_Index(o.ptr());
    if (!i) {
        PyErr_Clear();
        throw py::value_error(what + type_name(o));
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (overflow || v < 0 || v > INT_MAX) throw py::value_error(what + std::string(py::str(o)));
    return int(v);
}

// A real number (a Python float, int, or NumPy scalar); not a bool or a string.
inline double real_arg(const py::handle& o, const char* name) {
    const std::string what = std::string(name) + ": expected a real number, got ";
    if (PyBool_Check(o.ptr()) || PyUnicode_Check(o.ptr()) || PyBytes_Check(o.ptr()))
        throw py::value_error(what + type_name(o));
    const double v = PyFloat_AsDouble(o.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error(what + type_name(o));
    }
    return v;
}

inline std::string str_arg(const py::handle& o, const char* name) {
    if (!PyUnicode_Check(o.ptr())) throw py::value_error(std::string(name) + ": expected a str, got " + type_name(o));
    return py::cast<std::string>(o);
}

}  // namespace fastseq
