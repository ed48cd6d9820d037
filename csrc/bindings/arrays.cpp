#include "arrays.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "numpy_api.h"

namespace fusedopt {

namespace {

// ml_dtypes registers bfloat16 with NumPy when it is imported; its number
// stays the same for the life of the process once it exists.
int bfloat16_number() {
  static int number = -1;
  if (number >= 0) return number;
  PyObject* module = PyImport_GetModule(py::str("ml_dtypes").ptr());  // only if imported: no import here
  if (!module) {
    if (PyErr_Occurred()) throw py::error_already_set();
    return -1;
  }
  py::object ml = py::reinterpret_steal<py::object>(module);
  PyArray_Descr* descr = nullptr;
  if (!PyArray_DescrConverter(ml.attr("bfloat16").ptr(), &descr)) throw py::error_already_set();
  number = descr->type_num;
  Py_DECREF(descr);
  return number;
}

int npy_type(Dtype d) { return type_number(d); }

// Buffers of output arenas whose arrays have died, kept for the next step.
// The paysage path allocates a delta arena every step, and the previous one
// dies a step later (when optimizer.delta moves on): a fresh buffer of tens
// of MB costs its page faults and the kernel's zeroing of every page, more
// than the step itself. A buffer only comes back here when no array uses it.
struct Block {
  void* data;
  std::size_t bytes;
};
constexpr std::size_t kRecycleFrom = std::size_t(1) << 20;  // below: malloc reuses memory anyway
constexpr std::size_t kRecycleKeep = 2;                      // the previous delta, and one spare
std::mutex g_pool_mutex;
std::vector<Block>& pool() {
  static auto* blocks = new std::vector<Block>();  // never destroyed: capsules may outlive statics
  return *blocks;
}

void* take_block(std::size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    auto& blocks = pool();
    for (auto it = blocks.rbegin(); it != blocks.rend(); ++it)
      if (it->bytes == bytes) {
        void* data = it->data;
        blocks.erase(std::next(it).base());
        return data;
      }
  }
  void* data = std::aligned_alloc(64, bytes);
  if (!data) throw std::bad_alloc();
#ifdef __linux__
  madvise(data, bytes, MADV_HUGEPAGE);  // as NumPy does for its large arrays; a hint only
#endif
  return data;
}

void give_back(PyObject* capsule) {
  auto* block = static_cast<Block*>(PyCapsule_GetPointer(capsule, "fusedopt.block"));
  if (!block) return;
  void* drop = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    auto& blocks = pool();
    blocks.push_back(*block);
    if (blocks.size() > kRecycleKeep) {
      drop = blocks.front().data;
      blocks.erase(blocks.begin());
    }
  }
  std::free(drop);
  delete block;
}
}  // namespace

int type_number(Dtype dtype) { return dtype == BF16 ? bfloat16_number() : npy_type_number(dtype); }

int dtype_of_type_number(int type) {
  for (Dtype d : {F32, F64, F16})
    if (type == npy_type_number(d)) return d;
  if (type >= NPY_USERDEF && type == bfloat16_number()) return BF16;
  return -1;
}

py::object recycled_empty(std::size_t n, Dtype dtype) {
  const std::size_t item = item_size(dtype);
  const std::size_t bytes = (n * item + 63) / 64 * 64;
  if (bytes < kRecycleFrom) return aligned_empty(n, dtype);
  auto* block = new Block{take_block(bytes), bytes};
  PyObject* owner = PyCapsule_New(block, "fusedopt.block", &give_back);
  if (!owner) {
    std::free(block->data);
    delete block;
    throw py::error_already_set();
  }
  npy_intp dims = static_cast<npy_intp>(n);
  PyObject* arr = PyArray_New(&PyArray_Type, 1, &dims, npy_type(dtype), nullptr, block->data, 0, NPY_ARRAY_CARRAY,
                              nullptr);
  if (!arr) {
    Py_DECREF(owner);  // gives the buffer back
    throw py::error_already_set();
  }
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(arr), owner) < 0) {  // steals owner
    Py_DECREF(arr);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(arr);
}

py::object arena_view(py::handle arena, Dtype dtype, std::size_t offset, const std::vector<Py_ssize_t>& shape) {
  PyArrayObject* base = reinterpret_cast<PyArrayObject*>(arena.ptr());
  char* data = static_cast<char*>(PyArray_DATA(base)) + offset * item_size(dtype);
  std::vector<npy_intp> dims(shape.begin(), shape.end());
  PyObject* view = PyArray_New(&PyArray_Type, static_cast<int>(dims.size()), dims.data(), npy_type(dtype), nullptr,
                               data, 0, NPY_ARRAY_CARRAY, nullptr);
  if (!view) throw py::error_already_set();
  Py_INCREF(arena.ptr());
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(view), arena.ptr()) < 0) {
    Py_DECREF(view);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(view);
}

py::object aligned_empty(std::size_t n, Dtype dtype) {
  const std::size_t item = item_size(dtype);
  npy_intp raw_n = static_cast<npy_intp>(n + 64 / item);
  PyObject* raw = PyArray_EMPTY(1, &raw_n, npy_type(dtype), 0);
  if (!raw) throw py::error_already_set();
  py::object owner = py::reinterpret_steal<py::object>(raw);
  const auto addr = reinterpret_cast<std::uintptr_t>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(raw)));
  const std::size_t skip = ((64 - addr % 64) % 64) / item;
  return arena_view(owner, dtype, skip, {static_cast<Py_ssize_t>(n)});
}

void* arena_data(py::handle arena, Dtype dtype, std::size_t need, const char* what) {
  PyObject* o = arena.ptr();
  if (!PyArray_Check(o)) throw py::type_error(std::string(what) + " arena must be a numpy array");
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  if (PyArray_TYPE(a) != npy_type(dtype) || !PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a) ||
      static_cast<std::size_t>(PyArray_SIZE(a)) < need)
    throw py::value_error(std::string(what) + " arena must be a writeable C-contiguous " +
                          dtype_name(dtype) + " array of at least " + std::to_string(need) +
                          " elements");
  return PyArray_DATA(a);
}

namespace {
template <class T>
bool finite_run(const T* x, std::size_t n) {
  bool ok = true;  // no early exit: the loop vectorizes
  for (std::size_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]);
  return ok;
}
// bfloat16 and float16: finite unless every exponent bit is set.
bool finite_bits(const std::uint16_t* x, std::size_t n, std::uint16_t exponent) {
  bool ok = true;
  for (std::size_t i = 0; i < n; ++i) ok &= (x[i] & exponent) != exponent;
  return ok;
}
}  // namespace

bool all_finite(const void* data, Dtype dtype, std::size_t n) {
  switch (dtype) {
    case F32: return finite_run(static_cast<const float*>(data), n);
    case F64: return finite_run(static_cast<const double*>(data), n);
    case BF16: return finite_bits(static_cast<const std::uint16_t*>(data), n, 0x7F80);
    case F16: return finite_bits(static_cast<const std::uint16_t*>(data), n, 0x7C00);
  }
  return false;
}

}  // namespace fusedopt
