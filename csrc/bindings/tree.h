// A tree's structure (tuples, lists, dicts, namedtuples with arrays at the
// leaves), recorded once and then used to walk, check and rebuild trees of
// the same shape without per-leaf Python work.
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "common/multi_tensor.h"

namespace py = pybind11;

namespace fusedopt {

// Raised (as fusedopt._core.StructureError, a ValueError) when a tree does
// not have the structure the plan recorded.
struct StructureError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "(3,)", "(2, 5)": a shape as Python writes it.
std::string shape_string(const Py_ssize_t* dims, std::size_t ndim);
// "grads at ['w']", or "grads" for the root: the argument and the leaf an error is about.
std::string leaf_label(const std::string& name, const std::string& path);

struct LeafSpec {
  std::vector<Py_ssize_t> shape;
  Dtype dtype;
  std::size_t size;
  std::size_t offset;  // in elements, inside the arena of its dtype (64-byte aligned)
  std::string path;
};

struct Node {
  enum Kind { LEAF, TUPLE, LIST, DICT, NAMEDTUPLE } kind;
  py::object type;               // exact container class, rebuilt as such
  std::vector<py::object> keys;  // dict keys in first-seen order
  std::size_t nchild = 0;
  std::size_t leaf = 0;          // LEAF: index into leaves
  std::string path;
};

class Plan {
 public:
  // Records the structure of `tree`; `name` (the argument it was passed as) starts error messages.
  // Leaves are float32 or float64 arrays, also bfloat16 and float16 with `low_precision`.
  Plan(py::handle tree, const std::string& name, bool low_precision = false);

  // Calls visit(leaf_index, array_object) for every leaf of `tree`, in order,
  // after checking the containers; throws StructureError naming the path.
  template <class Visit>
  void walk(PyObject* tree, const char* name, Visit&& visit) const {
    std::size_t n = 0;
    walk_node(tree, name, n, visit);
  }

  // A tree of this structure whose leaves are `leaves` (in order).
  py::object unflatten(const std::vector<py::object>& leaves) const;
  // A tree of views into the two arenas (either may be None when unused).
  py::object views(py::handle arena32, py::handle arena64) const;

  const std::vector<LeafSpec>& leaves() const { return leaves_; }
  std::size_t arena_size(Dtype d) const { return arena_size_[d]; }
  bool uses(Dtype d) const { return uses_[d]; }
  const ChunkLayout& layout() const { return *layout_; }
  std::string shape_str(std::size_t leaf) const { return shape_string(leaves_[leaf].shape.data(), leaves_[leaf].shape.size()); }
  std::string describe(std::size_t node) const;

 private:
  void record(py::handle obj, const std::string& name, const std::string& path, bool low, int depth = 0);
  py::object build(std::size_t& node, const std::vector<py::object>& leaves) const;

  template <class Visit>
  void walk_node(PyObject* obj, const char* name, std::size_t& n, Visit& visit) const;
  [[noreturn]] void mismatch(std::size_t node, PyObject* obj, const char* name) const;

  std::vector<Node> nodes_;  // pre-order
  std::vector<LeafSpec> leaves_;
  std::size_t arena_size_[kNumDtypes] = {};
  bool uses_[kNumDtypes] = {};  // some leaf has this dtype
  std::unique_ptr<ChunkLayout> layout_;
};

template <class Visit>
void Plan::walk_node(PyObject* obj, const char* name, std::size_t& n, Visit& visit) const {
  const std::size_t here = n++;
  const Node& node = nodes_[here];
  switch (node.kind) {
    case Node::LEAF:
      visit(node.leaf, obj);
      return;
    case Node::TUPLE:
    case Node::NAMEDTUPLE:
      if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(node.type.ptr()) ||
          PyTuple_GET_SIZE(obj) != static_cast<Py_ssize_t>(node.nchild))
        mismatch(here, obj, name);
      for (std::size_t i = 0; i < node.nchild; ++i) walk_node(PyTuple_GET_ITEM(obj, i), name, n, visit);
      return;
    case Node::LIST:
      if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(node.type.ptr()) ||
          PyList_GET_SIZE(obj) != static_cast<Py_ssize_t>(node.nchild))
        mismatch(here, obj, name);
      for (std::size_t i = 0; i < node.nchild; ++i) walk_node(PyList_GET_ITEM(obj, i), name, n, visit);
      return;
    case Node::DICT:
      if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(node.type.ptr()) ||
          PyDict_Size(obj) != static_cast<Py_ssize_t>(node.nchild))
        mismatch(here, obj, name);
      for (const auto& key : node.keys) {
        PyObject* child = PyDict_GetItemWithError(obj, key.ptr());
        if (!child) {
          if (PyErr_Occurred()) throw py::error_already_set();
          mismatch(here, obj, name);
        }
        walk_node(child, name, n, visit);
      }
      return;
  }
}

}  // namespace fusedopt
