"""What a user writes: build an optimizer with a schedule, step, save and load a state.
tests/test_typing.py runs `mypy --strict` on this file; it must pass without a single ignore."""
from __future__ import annotations

import io
import pickle

import numpy as np
import numpy.typing as npt

import fusedopt
from fusedopt import optimizers, schedules


def train(opt: optimizers.Optimizer, params: dict[str, npt.NDArray[np.float32]], epochs: int) -> bool:
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        opt.update_lr()
        grad = {name: rng.standard_normal(p.shape).astype(np.float32) for name, p in params.items()}
        opt.update(params, grad)
    return opt.check_convergence()


def main() -> None:
    schedule = schedules.PowerLawDecay(initial=0.01, coefficient=0.1)
    opt = optimizers.ADAM(schedule, mean_weight=0.9, mean_square_weight=0.999, tolerance=1e-4,
                          check_finite=True, keep_delta=False)
    params = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    converged: bool = train(opt, params, 3)
    rate: np.float32 | None = opt.lr
    weight: np.float32 = opt.memory.mean_weight
    opt.memory.mean_weight = 0.8
    opt.tolerance = 1e-3
    opt.stepsize = schedules.ExponentialDecay(initial=0.005, coefficient=0.9)

    buffer = io.BytesIO()
    np.savez(buffer, **opt.state_dict())
    buffer.seek(0)
    resumed = optimizers.ADAM()
    with np.load(buffer) as saved:
        resumed.load_state_dict(saved)
    clone: optimizers.ADAM = pickle.loads(pickle.dumps(resumed))
    steps: int = clone.step_count
    momentum = optimizers.Momentum(0.01, momentum=0.5)
    momentum.reset()
    memory = optimizers.GradientMemory(0.9, 0.99)
    memory.update({"w": np.ones(3, np.float32)})
    try:
        opt.update(params, {"w": np.ones(3, np.float32)})
    except fusedopt.StructureError as exc:
        print("refused:", exc)
    print(repr(opt), converged, rate, weight, steps, repr(memory), fusedopt.simd_level(), optimizers.EPS)


if __name__ == "__main__":
    main()
