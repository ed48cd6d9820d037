"""The one place the version is written: pyproject.toml reads it at build time
(scikit-build-core's regex metadata provider) and ``fusedopt.__version__`` is it."""
__version__ = "0.1.0"
