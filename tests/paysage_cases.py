"""The paysage family's test registry: its optimizer classes by the kind names the
tests and the NumPy reference (tests/reference.py) use, and a set of non-default
weights per kind. Tests of the family draw their classes from here."""
from fusedopt import optimizers

CLASSES = {"gradient": optimizers.Gradient, "momentum": optimizers.Momentum,
           "rmsprop": optimizers.RMSProp, "adam": optimizers.ADAM}
KINDS = tuple(CLASSES)
# Non-default hyper-parameters of each kind (loading into a default-constructed optimizer
# must restore them).
WEIGHTS = {"gradient": {}, "momentum": {"momentum": 0.7}, "rmsprop": {"mean_square_weight": 0.95},
           "adam": {"mean_weight": 0.8, "mean_square_weight": 0.99}}
