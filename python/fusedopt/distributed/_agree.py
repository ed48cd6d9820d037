"""Agreement across ranks before any collective that could otherwise hang.

Every rank checks its own input first and then takes part in one small
allreduce of ``[error, hash, -hash]`` (MAX): afterwards all ranks know whether
any rank failed and whether all hashes are equal (``max(h) == -max(-h)``). A
failure anywhere is raised on every rank — the failing rank raises its own
exception, the others the same type with the failing rank's message — so no
rank goes on into a collective its peers will never join.
"""
from __future__ import annotations

import struct
from typing import Any, Optional

from mpi4py import MPI  # only fusedopt.distributed imports this module, after mpi4py

from ._abort import out_of_step

# An interrupt is raised as one on every rank, so that a script's `except KeyboardInterrupt:`
# (a checkpoint, say) runs on all of them and they call the same collectives.
_CODES: dict[type, int] = {ValueError: 1, TypeError: 2, FloatingPointError: 3, MemoryError: 4,
                           KeyboardInterrupt: 6}
_TYPES = {code: kind for kind, code in _CODES.items()}
_OTHER = 5  # any other exception: RuntimeError on the other ranks, naming its type


def _code(exc: Optional[BaseException]) -> int:
    if exc is None:
        return 0
    for kind, code in _CODES.items():
        if isinstance(exc, kind):
            return code
    return _OTHER


_MESSAGE = struct.Struct("=3q")  # [error, hash, -hash], three native int64


def message() -> list[Any]:
    """A message for agree() to reuse: its bytes and MPI type (mpi4py reads a [buffer, type]
    pair faster than a numpy array, whose dtype it must translate each call)."""
    return [bytearray(_MESSAGE.size), MPI.INT64_T]


def agree(comm: Any, exc: Optional[BaseException], value: int = 0, msg: Optional[list[Any]] = None) -> bool:
    """Raise `exc` (or its copy) on every rank if any rank has one; else return
    whether every rank passed the same `value` (a non-negative 62-bit int). `msg`: a message()
    to reuse (a step's own), else a new one."""
    if msg is None:
        msg = message()
    data = msg[0]
    _MESSAGE.pack_into(data, 0, 0 if exc is None else _code(exc), value, -value)
    comm.Allreduce(MPI.IN_PLACE, msg, MPI.MAX)
    code, high, low = _MESSAGE.unpack_from(data)
    if code:
        raise_everywhere(comm, exc)
    return high == -low


def agree_flag(comm: Any, exc: Optional[BaseException], flag: list[Any]) -> None:
    """agree() without a value, in the cheapest message: `flag`, [8 bytes kept zero between
    calls, MPI.INT64_T] (one int64 whose low byte is the error code)."""
    data = flag[0]
    if exc is not None:
        data[0] = _code(exc)
    comm.Allreduce(MPI.IN_PLACE, flag, MPI.MAX)
    if data[0]:
        data[0] = 0
        raise_everywhere(comm, exc)


def raise_everywhere(comm: Any, exc: Optional[BaseException]) -> None:
    """Called on all ranks once some rank is known to have failed: the lowest
    failing rank's error type and message are sent to all, and raised."""
    try:
        first = comm.allreduce(comm.Get_rank() if exc is not None else comm.Get_size(), op=MPI.MIN)
        info = comm.bcast((_code(exc), _text(exc)) if comm.Get_rank() == first else None, root=first)
    except BaseException as second:  # (an interrupt between the two: the peers wait in the bcast)
        out_of_step(comm, exc, second)
        raise
    if exc is not None:
        raise exc
    raise _TYPES.get(info[0], RuntimeError)(f"on rank {first}: {info[1]}")


def _text(exc: Optional[BaseException]) -> str:
    """The message the other ranks raise: the exception's own, with its type's name for an
    interrupt and for any type the others raise as RuntimeError."""
    if _code(exc) in (_OTHER, _CODES[KeyboardInterrupt]):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)


def try_local(fn: Any, *args: Any) -> tuple[Any, Optional[BaseException]]:
    """(fn(*args), None), or (None, the exception) for an error to agree on."""
    try:
        return fn(*args), None
    except Exception as exc:  # every local failure must reach the agreement, whatever it is
        return None, exc
