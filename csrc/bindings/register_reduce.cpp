// Binding of fusedopt.distributed's native side: FlatPack (a tree's leaves
// laid end to end in one byte buffer, the unit MPI moves) and the
// fixed-order rank average over received gradient shards.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "distributed/rank_sum.h"
#include "numpy_api.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

struct FlatLeaf {
  std::string path;
  std::vector<npy_intp> shape;
  int type;           // NPY_FLOAT or NPY_DOUBLE
  std::size_t bytes;  // of the whole leaf
  std::size_t offset;  // in bytes, inside the flat buffer
};

const char* type_name(int type) { return dtype_name(type == NPY_FLOAT ? F32 : F64); }

// The bytes of a C-contiguous uint8 array of at least `need` bytes; a buffer
// that is only read (a rank's own gradient row) may be read-only.
char* buffer_data(py::handle buf, std::size_t need, const char* what, bool writeable = true) {
  PyObject* o = buf.ptr();
  if (!PyArray_Check(o)) throw py::type_error(std::string(what) + " must be a numpy array");
  auto* a = reinterpret_cast<PyArrayObject*>(o);
  const bool layout_ok = writeable ? PyArray_ISCARRAY(a) : PyArray_ISCARRAY_RO(a);
  if (PyArray_TYPE(a) != NPY_UINT8 || !layout_ok || static_cast<std::size_t>(PyArray_NBYTES(a)) < need)
    throw py::value_error(std::string(what) + (writeable ? " must be a writeable" : " must be a") +
                          " C-contiguous uint8 array of at least " + std::to_string(need) + " bytes");
  return static_cast<char*>(PyArray_DATA(a));
}

class FlatPack {
 public:
  FlatPack(const std::vector<std::string>& paths, const std::vector<std::vector<npy_intp>>& shapes,
           const std::vector<std::string>& dtypes, const std::vector<std::size_t>& offsets) {
    if (shapes.size() != paths.size() || dtypes.size() != paths.size() || offsets.size() != paths.size())
      throw py::value_error("FlatPack: paths, shapes, dtypes and offsets must have one entry per leaf");
    for (std::size_t l = 0; l < paths.size(); ++l) {
      FlatLeaf f{paths[l], shapes[l], 0, 0, offsets[l]};
      if (dtypes[l] == "float32") f.type = NPY_FLOAT;
      else if (dtypes[l] == "float64") f.type = NPY_DOUBLE;
      else throw py::value_error("FlatPack: dtype must be float32 or float64, not " + dtypes[l]);
      std::size_t n = 1;
      for (npy_intp d : f.shape) n *= static_cast<std::size_t>(d);
      f.bytes = n * item_size(f.type == NPY_FLOAT ? F32 : F64);
      end_ = std::max(end_, f.offset + f.bytes);
      leaves_.push_back(std::move(f));
    }
  }

  std::size_t num_leaves() const { return leaves_.size(); }
  std::size_t end() const { return end_; }

  // Raises TypeError/ValueError naming the first leaf that is not an array of
  // its dtype and shape (and, with `writeable`, writeable and C-contiguous).
  void check(const py::list& leaves, const std::string& name, bool writeable) const {
    if (static_cast<std::size_t>(leaves.size()) != leaves_.size())
      throw py::value_error(name + ": expected " + std::to_string(leaves_.size()) + " leaves, got " +
                            std::to_string(leaves.size()));
    for (std::size_t l = 0; l < leaves_.size(); ++l) check_leaf(l, leaves[l].ptr(), name, writeable);
  }

  // Checks every leaf, then copies the bytes of the leaves that fall in the
  // flat range [lo, hi) into `out` (which holds that range, from lo).
  void pack(const py::list& leaves, py::handle out, const std::string& name, std::size_t lo, std::size_t hi) const {
    check(leaves, name, false);
    hi = std::min(hi, end_);
    char* base = buffer_data(out, hi > lo ? hi - lo : 0, "pack: out");
    std::vector<py::object> keep;  // contiguous copies of strided leaves, alive until copied
    Ranges r;
    for (std::size_t l = 0; l < leaves_.size(); ++l) {
      auto* a = reinterpret_cast<PyArrayObject*>(leaves[l].ptr());
      if (!overlaps(l, lo, hi)) continue;
      if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyObject* c = PyArray_NewCopy(a, NPY_CORDER);
        if (!c) throw py::error_already_set();
        keep.push_back(py::reinterpret_steal<py::object>(c));
        a = reinterpret_cast<PyArrayObject*>(c);
      }
      r.add(leaves_[l], static_cast<char*>(PyArray_DATA(a)), base, lo, hi, true);
    }
    r.run();  // `leaves` and `keep` hold every source
  }

  // Copies the flat range [lo, hi) of `flat` (which holds that range, from
  // lo) back into the writeable C-contiguous leaves (all checked first).
  void unpack(py::handle flat, const py::list& leaves, const std::string& name, std::size_t lo, std::size_t hi) const {
    check(leaves, name, true);
    hi = std::min(hi, end_);
    char* base = buffer_data(flat, hi > lo ? hi - lo : 0, "unpack: flat");
    Ranges r;
    for (std::size_t l = 0; l < leaves_.size(); ++l)
      if (overlaps(l, lo, hi))
        r.add(leaves_[l], static_cast<char*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(leaves[l].ptr()))), base,
              lo, hi, false);
    r.run();
  }

  // check(), then, for a layout of one leaf that a plain aligned C-contiguous
  // ndarray fills, a 1-D uint8 view of that array's own bytes (keeping it
  // alive; writeable as it is), which the collectives can use instead of a
  // packed copy. None otherwise.
  py::object flat_view(const py::list& leaves, const std::string& name, bool writeable) const {
    check(leaves, name, writeable);
    if (leaves_.size() != 1 || leaves_[0].offset != 0) return py::none();
    PyObject* o = leaves[0].ptr();
    auto* a = reinterpret_cast<PyArrayObject*>(o);
    if (Py_TYPE(o) != &PyArray_Type || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) return py::none();
    npy_intp n = static_cast<npy_intp>(leaves_[0].bytes);
    const int flags = PyArray_ISWRITEABLE(a) ? NPY_ARRAY_CARRAY : NPY_ARRAY_CARRAY_RO;
    PyObject* v = PyArray_New(&PyArray_Type, 1, &n, NPY_UINT8, nullptr, PyArray_DATA(a), 0, flags, nullptr);
    if (!v) throw py::error_already_set();
    Py_INCREF(o);
    if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(v), o) < 0) {
      Py_DECREF(v);
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::object>(v);
  }

  // Views of every leaf (its shape and dtype) into `flat`, which they keep alive.
  py::list views(py::handle flat) const {
    char* base = buffer_data(flat, end_, "views: flat");
    py::list out;
    for (const auto& f : leaves_) {
      std::vector<npy_intp> dims = f.shape;
      PyObject* v = PyArray_New(&PyArray_Type, static_cast<int>(dims.size()), dims.data(), f.type, nullptr,
                                base + f.offset, 0, NPY_ARRAY_CARRAY, nullptr);
      if (!v) throw py::error_already_set();
      Py_INCREF(flat.ptr());
      if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(v), flat.ptr()) < 0) {
        Py_DECREF(v);
        throw py::error_already_set();
      }
      out.append(py::reinterpret_steal<py::object>(v));
    }
    return out;
  }

 private:
  // Byte ranges to copy between leaves and a flat buffer, run without the GIL.
  struct Ranges {
    std::vector<const void*> src;
    std::vector<void*> dst;
    std::vector<std::size_t> bytes;
    void add(const FlatLeaf& f, char* leaf, char* flat, std::size_t lo, std::size_t hi, bool to_flat) {
      const std::size_t b = std::max(lo, f.offset), e = std::min(hi, f.offset + f.bytes);
      char* l = leaf + (b - f.offset);
      char* x = flat + (b - lo);  // the buffer holds [lo, hi)
      src.push_back(to_flat ? l : x);
      dst.push_back(to_flat ? x : l);
      bytes.push_back(e - b);
    }
    void run() {
      py::gil_scoped_release release;
      copy_ranges(src.data(), dst.data(), bytes.data(), src.size());
    }
  };

  bool overlaps(std::size_t l, std::size_t lo, std::size_t hi) const {
    const FlatLeaf& f = leaves_[l];
    return f.bytes > 0 && f.offset < hi && f.offset + f.bytes > lo;
  }

  void check_leaf(std::size_t l, PyObject* o, const std::string& name, bool writeable) const {
    const FlatLeaf& f = leaves_[l];
    const std::string where = f.path.empty() ? name : name + " at " + f.path;
    if (!PyArray_Check(o))
      throw py::type_error(where + ": expected a " + type_name(f.type) + " numpy array, got " + Py_TYPE(o)->tp_name);
    auto* a = reinterpret_cast<PyArrayObject*>(o);
    if (PyArray_TYPE(a) != f.type || !PyArray_ISNOTSWAPPED(a)) {
      const std::string got = py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a))));
      throw py::type_error(where + ": expected a " + type_name(f.type) + " numpy array, got dtype " + got);
    }
    const bool same = PyArray_NDIM(a) == static_cast<int>(f.shape.size()) &&
                      std::equal(f.shape.begin(), f.shape.end(), PyArray_DIMS(a));
    if (!same)
      throw py::value_error(where + ": expected shape " + shape_string(f.shape.data(), f.shape.size()) +
                            ", got " + shape_string(PyArray_DIMS(a), static_cast<std::size_t>(PyArray_NDIM(a))));
    if (writeable && !PyArray_ISWRITEABLE(a)) throw py::value_error(where + ": the array is read-only");
    if (writeable && (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)))
      throw py::value_error(where + ": expected a C-contiguous array (it is stepped in place)");
  }

  std::vector<FlatLeaf> leaves_;
  std::size_t end_ = 0;
};

// The rows of one shard, one per rank in rank order (each its own buffer),
// averaged into out: the float32 part (n32 elements at byte off32 of a row),
// then the float64 part.
void rank_average(const py::sequence& rows, py::handle out, std::size_t off32, std::size_t n32, std::size_t off64,
                  std::size_t n64, double divisor) {
  const std::size_t k = rows.size();
  if (k == 0) throw py::value_error("rank_average: needs at least one row");
  const std::size_t row = std::max(n32 ? off32 + 4 * n32 : 0, n64 ? off64 + 8 * n64 : 0);  // bytes a row uses
  std::vector<py::object> keep;  // owned: the rows stay alive while the GIL is released
  std::vector<const float*> r32;
  std::vector<const double*> r64;
  char* o = buffer_data(out, row, "rank_average: out");
  auto misaligned = [&](const char* base) {
    return (n32 && reinterpret_cast<std::uintptr_t>(base + off32) % 4) ||
           (n64 && reinterpret_cast<std::uintptr_t>(base + off64) % 8);
  };
  for (std::size_t r = 0; r < k; ++r) {
    keep.push_back(rows[r]);
    const char* in = buffer_data(keep.back(), row, "rank_average: a row", false);
    if (misaligned(in)) throw py::value_error("rank_average: misaligned offsets or rows");
    // out is written chunk by chunk before later rows are read: it may only be row 0 itself.
    if (row && (r > 0 || in != o) && in < o + row && o < in + row)
      throw py::value_error("rank_average: out overlaps a row other than row 0");
    r32.push_back(reinterpret_cast<const float*>(in + off32));
    r64.push_back(reinterpret_cast<const double*>(in + off64));
  }
  if (misaligned(o)) throw py::value_error("rank_average: misaligned offsets or rows");
  py::object out_ref = py::reinterpret_borrow<py::object>(out);  // owned too, while the GIL is released
  py::gil_scoped_release release;
  rank_average_f32(r32.data(), k, n32, static_cast<float>(divisor), reinterpret_cast<float*>(o + off32));
  rank_average_f64(r64.data(), k, n64, divisor, reinterpret_cast<double*>(o + off64));
}

}  // namespace

void register_reduce(py::module_& m) {
  py::class_<FlatPack>(m, "FlatPack", "A tree's leaves laid end to end in one byte buffer (fusedopt.distributed).")
      .def(py::init<const std::vector<std::string>&, const std::vector<std::vector<npy_intp>>&,
                    const std::vector<std::string>&, const std::vector<std::size_t>&>(),
           py::arg("paths"), py::arg("shapes"), py::arg("dtypes"), py::arg("offsets"))
      .def_property_readonly("num_leaves", &FlatPack::num_leaves)
      .def_property_readonly("end", &FlatPack::end)
      .def("check", &FlatPack::check, py::arg("leaves"), py::arg("name"), py::arg("writeable") = false,
           "Raise TypeError/ValueError naming the first leaf that does not fit.")
      .def("pack", &FlatPack::pack, py::arg("leaves"), py::arg("out"), py::arg("name"), py::arg("lo") = 0,
           py::arg("hi") = static_cast<std::size_t>(-1),
           "Check the leaves, then copy their bytes in the flat range [lo, hi) into `out` (holding that range).")
      .def("unpack", &FlatPack::unpack, py::arg("flat"), py::arg("leaves"), py::arg("name"), py::arg("lo") = 0,
           py::arg("hi") = static_cast<std::size_t>(-1),
           "Copy the flat range [lo, hi) of `flat` (holding that range) back into the checked, writeable leaves.")
      .def("views", &FlatPack::views, py::arg("flat"), "Views of every leaf into `flat`.")
      .def("flat_view", &FlatPack::flat_view, py::arg("leaves"), py::arg("name"), py::arg("writeable") = false,
           "check(), then a uint8 view of the one leaf's own bytes when it is a plain aligned C-contiguous "
           "array filling the layout; None otherwise.");
  m.def("rank_average", &rank_average, py::arg("rows"), py::arg("out"), py::arg("off32"), py::arg("n32"),
        py::arg("off64"), py::arg("n64"), py::arg("divisor"),
        "out = (((rows[0] + rows[1]) + ...) + rows[k-1]) / divisor per element, in each part's dtype; "
        "rows are separate uint8 buffers (read-only ones too), out may be rows[0].");
}

}  // namespace fusedopt
