// The one translation of C++ exceptions from llama.cpp into Python exceptions.
//
// Every llama.cpp function that can throw is declared `except +raise_cpp_error` in
// includes/llama.pxd; Cython calls this inside its catch block. std::bad_alloc (and the
// length_error a vector throws for an impossible size) becomes llama_cython.AllocationError,
// anything else llama_cython.LlamaError with what() in the message. The exception classes
// are handed over once, at import (set_error_types in _errors.pxi).
#pragma once

#include <Python.h>

#include <exception>
#include <new>
#include <stdexcept>

namespace llama_cython {

static PyObject * allocation_error_type = nullptr;
static PyObject * llama_error_type = nullptr;

inline void set_error_types(PyObject * allocation, PyObject * base) {
    Py_XINCREF(allocation);
    Py_XINCREF(base);
    allocation_error_type = allocation;
    llama_error_type = base;
}

inline void raise_cpp_error() {
    PyObject * alloc = allocation_error_type ? allocation_error_type : PyExc_MemoryError;
    PyObject * base = llama_error_type ? llama_error_type : PyExc_RuntimeError;
    try {
        throw;
    } catch (const std::bad_alloc &) {
        PyErr_SetString(alloc, "llama.cpp could not allocate memory (std::bad_alloc)");
    } catch (const std::length_error & e) {
        PyErr_Format(alloc, "llama.cpp asked for an impossible size (std::length_error: %s)", e.what());
    } catch (const std::exception & e) {
        PyErr_Format(base, "llama.cpp failed: %s", e.what());
    } catch (...) {
        PyErr_SetString(base, "llama.cpp failed with an unknown C++ exception");
    }
}

}  // namespace llama_cython
