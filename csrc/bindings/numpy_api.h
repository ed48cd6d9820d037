// NumPy's C API, shared by the binding translation units: module.cpp imports
// it (FUSEDOPT_IMPORT_NUMPY), the others only use it.
#pragma once
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
// Binary compatible with NumPy >= 1.23 whatever NumPy builds it (pyproject: numpy>=1.23).
#define NPY_TARGET_VERSION NPY_1_23_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fusedopt_ARRAY_API
#ifndef FUSEDOPT_IMPORT_NUMPY
#define NO_IMPORT_ARRAY
#endif
#include <Python.h>
#include <numpy/arrayobject.h>

#include "common/dtype.h"

static_assert(fusedopt::npy_type_number(fusedopt::F32) == NPY_FLOAT &&
                  fusedopt::npy_type_number(fusedopt::F64) == NPY_DOUBLE &&
                  fusedopt::npy_type_number(fusedopt::F16) == NPY_HALF,
              "dtype.h's NumPy type numbers must be NumPy's");
