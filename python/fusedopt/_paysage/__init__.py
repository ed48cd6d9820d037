"""The paysage family's internals: value checks and the versioned state format.

Its public modules are ``fusedopt.optimizers`` and ``fusedopt.schedules``, at the paths
paysage users import.
"""
