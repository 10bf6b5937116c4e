// The load-progress callback, in C++ so that nothing in it can be lost.
//
// llama.cpp calls it on the loading thread (which released the GIL) and cancels the load when
// it returns false. It calls the user's Python callable with the GIL; an exception from it
// (KeyboardInterrupt included) or a false result cancels the load, and the exception is kept
// in the state for load_model to raise once llama.cpp has returned. Written in Cython, a
// `noexcept` callback could only report a failure of its own bookkeeping as "unraisable".
#pragma once

#include <Python.h>

namespace llama_cython {

struct ProgressState {
    PyObject * fn = nullptr;      // borrowed: load_model keeps it alive
    PyObject * error = nullptr;   // owned: the exception to raise after the load
    bool cancelled = false;
};

inline void progress_keep_error(ProgressState * st) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != nullptr && tb != nullptr) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (st->error == nullptr) {
        st->error = value;
    } else {
        Py_XDECREF(value);
    }
    st->cancelled = true;
}

inline bool progress_callback(float progress, void * user_data) noexcept {
    ProgressState * st = (ProgressState *) user_data;
    if (st == nullptr || st->fn == nullptr || st->cancelled) return !st || !st->cancelled;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject * arg = PyFloat_FromDouble((double) progress);
    PyObject * result = arg ? PyObject_CallOneArg(st->fn, arg) : nullptr;
    Py_XDECREF(arg);
    if (result == nullptr) {
        progress_keep_error(st);
    } else {
        if (result != Py_None) {
            const int truth = PyObject_IsTrue(result);
            if (truth < 0) {
                progress_keep_error(st);
            } else if (truth == 0) {
                st->cancelled = true;
            }
        }
        Py_DECREF(result);
    }
    PyGILState_Release(gil);
    return !st->cancelled;
}

}  // namespace llama_cython
