"""``python -m fusedopt`` prints this install's configuration (see show_config)."""
from ._config import show_config

show_config()
