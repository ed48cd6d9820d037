#include "tree.h"

#include <cctype>
#include <unordered_set>

#include "arrays.h"
#include "numpy_api.h"

namespace fusedopt {

namespace {

bool is_namedtuple(py::handle obj) {
  return PyTuple_Check(obj.ptr()) && !PyTuple_CheckExact(obj.ptr()) && py::hasattr(obj, "_fields");
}

std::string type_name(PyObject* obj) { return Py_TYPE(obj)->tp_name; }

std::string join_path(const std::string& parent, const std::string& child) {
  return parent + child;
}

// repr(key) without the " at 0x..." of default reprs ("<Class object at
// 0x...>"): paths are saved in state_dict() and must read the same in another
// process. Other reprs (strings, numbers) are kept as they are.
std::string key_label(py::handle key) {
  std::string r = py::repr(key).cast<std::string>();
  if (r.size() < 2 || r.front() != '<' || r.back() != '>') return r;
  for (std::size_t at = r.find(" at 0x"); at != std::string::npos; at = r.find(" at 0x", at)) {
    std::size_t end = at + 6;
    while (end < r.size() && std::isxdigit(static_cast<unsigned char>(r[end]))) ++end;
    r.erase(at, end - at);
  }
  return r;
}

// Labels made unique in order: the second "x" becomes "x#2", the third "x#3"
// (and a label taken already by a later one moves on to the next number).
void make_unique(std::vector<std::string>& labels) {
  std::unordered_set<std::string> seen;
  for (auto& label : labels) {
    if (seen.insert(label).second) continue;
    for (int k = 2;; ++k) {
      std::string next = label + "#" + std::to_string(k);
      if (seen.insert(next).second) {
        label = std::move(next);
        break;
      }
    }
  }
}

}  // namespace

std::string leaf_label(const std::string& name, const std::string& path) {
  return path.empty() ? name : name + " at " + path;
}

Plan::Plan(py::handle tree, const std::string& name, bool low_precision) {
  record(tree, name, "", low_precision);
  // Labels are unique inside each dict, but a custom repr may still spell a
  // whole path of another branch: leaf paths are made unique as a last step.
  std::vector<std::string> paths;
  for (const auto& leaf : leaves_) paths.push_back(leaf.path);
  make_unique(paths);
  for (std::size_t l = 0; l < leaves_.size(); ++l) leaves_[l].path = std::move(paths[l]);
  std::vector<std::size_t> sizes;
  sizes.reserve(leaves_.size());
  for (auto& leaf : leaves_) {
    leaf.offset = arena_size_[leaf.dtype];
    uses_[leaf.dtype] = true;
    // Each leaf starts on a 64-byte boundary of its arena.
    const std::size_t per_line = 64 / item_size(leaf.dtype);
    arena_size_[leaf.dtype] += (leaf.size + per_line - 1) / per_line * per_line;
    sizes.push_back(leaf.size);
  }
  layout_ = std::make_unique<ChunkLayout>(sizes);
  // Rebuild the containers once now, so that one that cannot be rebuilt is refused
  // before any step runs rather than after its kernel.
  unflatten(std::vector<py::object>(leaves_.size(), py::none()));
}

// Deeper trees are refused: a container that contains itself would otherwise
// recurse until the C stack overflows.
constexpr int kMaxDepth = 1000;

void Plan::record(py::handle obj, const std::string& name, const std::string& path, bool low, int depth) {
  if (depth > kMaxDepth)
    throw py::value_error(name + " at " + path.substr(0, 60) + "...: the tree is nested more than " +
                          std::to_string(kMaxDepth) + " levels deep (does a container contain itself?)");
  const std::size_t here = nodes_.size();
  nodes_.push_back(Node{});
  nodes_[here].path = path;
  PyObject* o = obj.ptr();
  auto children = [&](Node::Kind kind, std::size_t count) {
    nodes_[here].kind = kind;
    nodes_[here].type = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(Py_TYPE(o)));
    nodes_[here].nchild = count;
  };
  if (PyArray_Check(o)) {
    PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
    const int d = dtype_of_type_number(PyArray_TYPE(a));
    if (d < 0 || (!low && is_low(static_cast<Dtype>(d))))
      throw py::type_error(leaf_label(name, path) + ": expected a " +
                           (low ? "float32, float64, bfloat16 (ml_dtypes) or float16" : "float32 or float64") +
                           " array, got dtype " +
                           py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a)))).cast<std::string>() +
                           " (convert it, e.g. x.astype(np.float32))");
    LeafSpec spec;
    spec.dtype = static_cast<Dtype>(d);
    spec.shape.assign(PyArray_DIMS(a), PyArray_DIMS(a) + PyArray_NDIM(a));
    spec.size = static_cast<std::size_t>(PyArray_SIZE(a));
    spec.offset = 0;
    spec.path = path;
    nodes_[here].kind = Node::LEAF;
    nodes_[here].leaf = leaves_.size();
    leaves_.push_back(std::move(spec));
  } else if (is_namedtuple(obj)) {
    const Py_ssize_t n = PyTuple_GET_SIZE(o);
    children(Node::NAMEDTUPLE, static_cast<std::size_t>(n));
    py::tuple fields = obj.attr("_fields");
    for (Py_ssize_t i = 0; i < n; ++i) {
      const std::string field = py::str(fields[i]);
      record(PyTuple_GET_ITEM(o, i), name, path.empty() ? field : join_path(path, "." + field), low, depth + 1);
    }
  } else if (PyTuple_Check(o)) {
    const Py_ssize_t n = PyTuple_GET_SIZE(o);
    children(Node::TUPLE, static_cast<std::size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) record(PyTuple_GET_ITEM(o, i), name, join_path(path, "[" + std::to_string(i) + "]"), low, depth + 1);
  } else if (PyList_Check(o)) {
    const Py_ssize_t n = PyList_GET_SIZE(o);
    children(Node::LIST, static_cast<std::size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      py::object item = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(o, i));
      record(item, name, join_path(path, "[" + std::to_string(i) + "]"), low, depth + 1);
    }
  } else if (PyDict_Check(o)) {
    children(Node::DICT, static_cast<std::size_t>(PyDict_Size(o)));
    py::dict d = py::reinterpret_borrow<py::dict>(obj);
    std::vector<py::object> keys;
    for (auto item : d) keys.push_back(py::reinterpret_borrow<py::object>(item.first));
    nodes_[here].keys = keys;
    std::vector<std::string> labels;
    for (const auto& key : keys) labels.push_back(key_label(key));
    make_unique(labels);
    for (std::size_t k = 0; k < keys.size(); ++k)
      record(d[keys[k]], name, join_path(path, "[" + labels[k] + "]"), low, depth + 1);
  } else {
    throw py::type_error(leaf_label(name, path) +
                         ": expected a numpy array (float32 or float64) or a tuple, list, dict or namedtuple of them, got " +
                         type_name(o) +
                         (PyFloat_Check(o) || PyLong_Check(o) ? " (wrap a scalar in np.array(x, np.float32))" : ""));
  }
}

std::string shape_string(const Py_ssize_t* dims, std::size_t ndim) {
  std::string out = "(";
  for (std::size_t i = 0; i < ndim; ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + (ndim == 1 ? ",)" : ")");
}

namespace {

std::string entries(std::size_t n) { return std::to_string(n) + (n == 1 ? " entry" : " entries"); }

}  // namespace

std::string Plan::describe(std::size_t node) const {
  const Node& n = nodes_[node];
  const std::string count = entries(n.nchild);
  switch (n.kind) {
    case Node::LEAF: return "an array";
    case Node::TUPLE: return "a " + std::string(reinterpret_cast<PyTypeObject*>(n.type.ptr())->tp_name) + " of " + count;
    case Node::LIST: return "a " + std::string(reinterpret_cast<PyTypeObject*>(n.type.ptr())->tp_name) + " of " + count;
    case Node::NAMEDTUPLE: return "a " + py::str(n.type.attr("__name__")).cast<std::string>() + " namedtuple";
    case Node::DICT: {
      std::string keys;
      for (const auto& k : n.keys) keys += (keys.empty() ? "" : ", ") + py::repr(k).cast<std::string>();
      return "a " + std::string(reinterpret_cast<PyTypeObject*>(n.type.ptr())->tp_name) + " with keys [" + keys + "]";
    }
  }
  return "?";
}

namespace {

// "; missing keys 'a', 'b'": the keys of `keys` that dict `d` lacks, or "" if it has them all.
template <class Keys>
std::string keys_lacking(const Keys& keys, PyObject* d, const char* what) {
  std::vector<std::string> out;
  for (const auto& k : keys) {
    const int has = PyDict_Contains(d, py::handle(k).ptr());
    if (has < 0) throw py::error_already_set();
    if (!has) out.push_back(py::repr(py::handle(k)).template cast<std::string>());
  }
  if (out.empty()) return "";
  std::string joined;
  for (const auto& k : out) joined += (joined.empty() ? "" : ", ") + k;
  return std::string("; ") + what + (out.size() == 1 ? " key " : " keys ") + joined;
}

}  // namespace

void Plan::mismatch(std::size_t node, PyObject* obj, const char* name) const {
  const Node& n = nodes_[node];
  std::string got = type_name(obj);
  if (PyTuple_Check(obj) || PyList_Check(obj) || PyDict_Check(obj))
    got = "a " + got + " of " + entries(static_cast<std::size_t>(PyObject_Length(obj)));
  std::string fix;
  if (n.kind == Node::DICT && PyDict_Check(obj)) {
    // Which keys differ, by name: the expected keys the dict lacks, and its keys the first step did not have.
    py::dict recorded;
    for (const auto& k : n.keys) recorded[k] = py::none();
    PyObject* keys = PyDict_Keys(obj);
    if (!keys) throw py::error_already_set();
    py::list present = py::reinterpret_steal<py::list>(keys);
    fix = keys_lacking(n.keys, obj, "missing") + keys_lacking(present, recorded.ptr(), "unexpected");
  }
  // Parameters are checked against the gradient's plan (the paysage family): say so.
  const bool params = std::string(name) == "params";
  throw StructureError(leaf_label(name, n.path) + " does not match the structure it is stepped with: expected " +
                       (params ? "(as in the gradient) " : "") + describe(node) + ", got " + got + fix +
                       " (parameters and gradients share one structure, fixed at the first step)");
}

namespace {

// type(node)(entries) must give back a container of that very type with every entry:
// a defaultdict, or a subclass with a constructor of its own, may not.
template <class Make>
py::object rebuilt(const Node& node, Make&& make) {
  auto where = [&] {  // only on error: this runs for every namedtuple of every delta tree
    return "at " + (node.path.empty() ? std::string("the root") : node.path) + ": a " +
           reinterpret_cast<PyTypeObject*>(node.type.ptr())->tp_name;
  };
  py::object out;
  try {
    out = make();
  } catch (py::error_already_set& e) {
    throw py::type_error(where() + " cannot be rebuilt from its entries (" + e.what() +
                         "); use a list, tuple, dict or namedtuple");
  }
  Py_ssize_t n = PyObject_Length(out.ptr());
  if (n < 0) PyErr_Clear();
  if (Py_TYPE(out.ptr()) != reinterpret_cast<PyTypeObject*>(node.type.ptr()) || n != static_cast<Py_ssize_t>(node.nchild))
    throw py::type_error(where() + " is not rebuilt with its entries by calling its class on them; use a list, tuple, "
                         "dict or namedtuple");
  return out;
}

}  // namespace

py::object Plan::build(std::size_t& i, const std::vector<py::object>& leaves) const {
  const Node& node = nodes_[i++];
  switch (node.kind) {
    case Node::LEAF:
      return leaves[node.leaf];
    case Node::TUPLE: {
      py::tuple t(node.nchild);
      for (std::size_t k = 0; k < node.nchild; ++k) t[k] = build(i, leaves);
      if (node.type.ptr() == reinterpret_cast<PyObject*>(&PyTuple_Type)) return std::move(t);
      return rebuilt(node, [&] { return node.type(t); });
    }
    case Node::NAMEDTUPLE: {
      py::tuple t(node.nchild);
      for (std::size_t k = 0; k < node.nchild; ++k) t[k] = build(i, leaves);
      return rebuilt(node, [&] { return node.type(*t); });
    }
    case Node::LIST: {
      py::list l(node.nchild);
      for (std::size_t k = 0; k < node.nchild; ++k) l[k] = build(i, leaves);
      if (node.type.ptr() == reinterpret_cast<PyObject*>(&PyList_Type)) return std::move(l);
      return rebuilt(node, [&] { return node.type(l); });
    }
    case Node::DICT: {
      py::dict d;
      for (const auto& key : node.keys) d[key] = build(i, leaves);
      if (node.type.ptr() == reinterpret_cast<PyObject*>(&PyDict_Type)) return std::move(d);
      return rebuilt(node, [&] { return node.type(d); });
    }
  }
  throw std::logic_error("corrupt plan");
}

py::object Plan::unflatten(const std::vector<py::object>& leaves) const {
  if (leaves.size() != leaves_.size())
    throw py::value_error("unflatten needs " + std::to_string(leaves_.size()) + " leaves, got " +
                          std::to_string(leaves.size()));
  std::size_t i = 0;
  return build(i, leaves);
}

}  // namespace fusedopt

#include "arrays.h"

namespace fusedopt {

py::object Plan::views(py::handle arena32, py::handle arena64) const {
  // Each arena is checked once, not once per leaf.
  for (Dtype d : {F32, F64})
    if (uses_[d]) arena_data(d == F32 ? arena32 : arena64, d, arena_size_[d], "view");
  std::vector<py::object> leaves;
  leaves.reserve(leaves_.size());
  for (const auto& s : leaves_)
    leaves.push_back(arena_view(s.dtype == F32 ? arena32 : arena64, s.dtype, s.offset, s.shape));
  return unflatten(leaves);
}

}  // namespace fusedopt
