// The native state of a GradientMemory (fusedopt._core.State): plan, moment
// arenas, per-leaf sums, weights, and its one step, which checks every array
// (nothing is modified until all pass), runs the kernel without the GIL while
// owning a reference to every array it touches, and commits moments, sums,
// step count and delta together (docs/threads.md).
#pragma once
#include <pybind11/pybind11.h>

#include "paysage/rules.h"
#include "overlap.h"
#include "tree.h"

namespace py = pybind11;

namespace fusedopt {

// Rows whose average the next step reads instead of the gradient leaves that
// lie in `base` (State.average_next, for fusedopt.distributed): the kernel
// averages them chunk by chunk, so the average is never written to memory.
struct RowAverage {
  py::object rows = py::none();  // a list of C-contiguous arrays holding base's byte layout
  py::object base = py::none();  // where the leaves lie; never read nor written by the step
  double divisor = 1.0;
  bool active() const { return !base.is_none(); }
};

// Moments loaded without a structure (GradientMemory.load_state_dict), put
// under the structure of the next step's gradient: that step starts from them
// and commits them with its own results, or nothing (State.install_next).
struct Staged {
  py::object plan = py::none();
  py::object mean = py::none(), mean_square = py::none();  // arenas, or None
  bool active() const { return !plan.is_none(); }
};

class State {
 public:
  py::object plan = py::none();       // Plan of the gradients, or None
  py::object mean = py::none();       // (float32 arena, float64 arena) or None
  py::object mean_square = py::none();
  py::object sums = py::none();       // float64 sum(d*d) per leaf of the last optimizer step
  double w = 0, w2 = 0;               // the float32 weights, as doubles
  long long conv_count = -1;          // n of check_convergence; -1: unknown until the next step
  bool conv_inplace = false;          // the last optimizer step was in place: check_convergence uses sums
  py::object pending = py::none();    // the loaded moments waiting for a structure (Python's), or None

  // Trees of views into the current arenas, built on first use.
  py::object tree(bool square) {
    py::object& cache = square ? v_tree_ : m_tree_;
    const py::object& arenas = square ? mean_square : mean;
    if (cache.is_none() && !arenas.is_none() && !plan.is_none())
      cache = plan.cast<const Plan&>().views(arenas[py::int_(0)], arenas[py::int_(1)]);
    return cache;
  }
  void set_tree(bool square, py::object views) { (square ? v_tree_ : m_tree_) = std::move(views); }
  void set_plan(py::object p);
  void set_moment(bool square, py::object arenas);

  py::object step(py::handle owner, py::handle rule_arg, py::handle output_arg, py::handle grad, py::handle target,
                  double lr, bool check_finite);

  // Optimizer.update(model, grad) of `owner`: the interface declared in
  // python/fusedopt/_paysage/native_step.py. Python hands over the class's rule, the
  // stepsize schedule and unset_rate (stepsize -> (key, rate), for steps before any
  // update_lr()); the public settings (lr, ascent, check_finite, keep_delta) are read
  // from the instance dict here: one native call instead of a dozen attribute reads.
  void update(PyObject* owner, PyObject* rule, PyObject* stepsize, PyObject* unset_rate, PyObject* model,
              PyObject* grad);

  py::object step_as(py::handle owner, Rule rule, Output output, py::handle grad, py::handle target, double lr,
                     bool check_finite);

  // The next step (step() or update()) reads every gradient leaf lying inside `base` as the
  // average of `rows` at the same byte offset, (((rows[0] + rows[1]) + ...) / divisor) in the
  // leaf's dtype, inside its kernel (fusedopt.distributed's fused rank average). None: no rows.
  void average_next(py::object rows, py::object base, double divisor);

  // The next step starts from these plan and moment arenas instead of the state's, and
  // commits them (and clears `pending`) with its results; a refused step leaves the state as
  // it was. Cleared by any assignment of the plan or a moment.
  void install_next(py::object plan, py::object mean, py::object mean_square);
 private:

  py::object m_tree_ = py::none(), v_tree_ = py::none();
  // The last rule object handed to update() and its value; the last model class and
  // whether it has parameter_update (both kept alive, so their addresses are never reused).
  py::object rule_obj_ = py::none(), model_type_ = py::none();
  Rule rule_ = Rule::GRADIENT;
  // The last cacheable answer of unset_rate: stepsize.value's object (kept alive) and its rate.
  py::object unset_key_ = py::none();
  double unset_rate_ = 0;
  bool model_is_model_ = false;

  // An attribute of the optimizer: its instance dict's value, else Python's lookup (a class
  // attribute, or the AttributeError a plain read would raise).
  static py::object setting(PyObject* owner, const py::object& dict, PyObject* name);
  static bool truth(const py::object& o);
  // A rate: a Python float, a numpy float32 (as update_lr() stores it) or anything float() takes.
  static double as_double(PyObject* o);
  // The rate before any update_lr(): the cached rate when stepsize.value is the cached
  // value object, else unset_rate(stepsize)'s, cached when its key is not None.
  double unset_lr(PyObject* stepsize, PyObject* unset_rate);
  Rule rule_of(PyObject* rule);
  bool is_model(PyObject* model);
  py::int_ one_{1};
  const Plan* plan_ptr_ = nullptr;  // plan's C++ object (plan keeps it alive)
  py::object m_spare_ = py::none(), v_spare_ = py::none();  // second buffers of the paysage path
  CheckedAddresses checked_;
  RowAverage pending_avg_;  // set by average_next for the next step
  Staged staged_;           // set by install_next for the next step

  void drop_spares() {
    m_spare_ = py::none();
    v_spare_ = py::none();
  }

  static py::object new_plan(py::handle grad) { return py::type::of<Plan>()(grad, "grad"); }

  // The spare arenas when nothing else uses them (a view held by the user
  // must keep its values), else new ones.
  static bool unshared(PyObject* arena);
  static py::object free_spare(py::object& spare, const Plan& plan);

  py::object run(py::handle owner, Rule r, Output output, py::handle grad, py::handle target, double lr,
                 bool check_finite, py::object plan_obj, bool& model_called, const RowAverage& avg,
                 const Staged& staged);
};

}  // namespace fusedopt
