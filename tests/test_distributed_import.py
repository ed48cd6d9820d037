"""The import rules of the optional MPI family: `import fusedopt` never needs mpi4py, and
`import fusedopt.distributed` without it names the extra to install."""
import subprocess
import sys


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_fusedopt_never_needs_mpi():
    proc = _python("import sys, fusedopt, fusedopt.optimizers\nassert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    assert proc.returncode == 0, proc.stderr


def test_distributed_without_mpi4py_names_the_extra():
    proc = _python("import sys; sys.modules['mpi4py'] = None\nimport fusedopt.distributed")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "fusedopt[mpi]" in proc.stderr, proc.stderr
