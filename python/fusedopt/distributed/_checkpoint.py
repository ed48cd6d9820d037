"""Sharded checkpoints: every rank writes and reads only its part of the optimizer state.

A checkpoint is a directory of N files ``shard-<r>-of-<N>.npz``, one per rank of the run
that saved it (np.savez, written to a temporary name and renamed into place). File r holds

- ``start``, ``end``: the bytes of leaf data of the flat layout (docs/distributed.md) that it
  covers, rank r's shard at N (with or without shard_state: the cut is the layout's);
- ``flat.<name>``: those bytes of every moment or slot (``flat_names`` lists them);
- ``state.<key>``: the optimizer's state in its own format without its leaves' values (its
  scalars, schedule, hyper-parameters and, for fusedopt.optim, the whole tree's leaf paths,
  dtypes and decay flags), the same in every file;
- the layout (``leaf_paths``, ``leaf_dtypes``, ``leaf_shapes``), ``size`` N, ``rank`` r and
  ``checkpoint``, a hash of the state, the layout and N: the same in every file of one save.

Loading at M ranks, rank k reads the files whose ranges overlap the bytes it needs (its own
shard, or all of them without shard_state) and checks the headers of files 0 and k, k+M, ...
as well, so that every file is checked against file 0 by some rank; an error anywhere is
raised on every rank.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _fields
from ._layout import Layout, data_range

FORMAT = "fusedopt.distributed sharded checkpoint"
VERSION = 1
_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.npz$")


def file_name(rank: int, size: int) -> str:
    return f"shard-{rank}-of-{size}.npz"


def _strs(items: list[str]) -> np.ndarray:
    return np.array(items, dtype=str) if items else np.zeros(0, dtype=str)


def layout_entries(lay: Layout) -> dict[str, np.ndarray]:
    return {"leaf_paths": _strs(lay.paths), "leaf_dtypes": _strs(lay.dtypes),
            "leaf_shapes": _strs([repr(tuple(s)) for s in lay.shapes])}


def checkpoint_id(scalars: Mapping[str, Any], lay: Layout, size: int) -> int:
    return _fields.static_hash(_fields.state_hash(scalars), lay.describe(), size)


def write(directory: str, rank: int, size: int, scalars: Mapping[str, Any], lay: Layout,
          flats: Mapping[str, np.ndarray]) -> None:
    """Write this rank's file: `flats` hold the bytes data_range(lay.data, size, rank) of each
    moment or slot."""
    start, end = data_range(lay.data, size, rank)
    entries: dict[str, Any] = {"format": FORMAT, "format_version": VERSION, "size": size, "rank": rank,
                               "checkpoint": checkpoint_id(scalars, lay, size), "start": start, "end": end,
                               "flat_names": _strs(sorted(flats)), **layout_entries(lay)}
    entries.update({f"state.{k}": v for k, v in scalars.items()})
    entries.update({f"flat.{k}": np.asarray(v, dtype=np.uint8)[:end - start] for k, v in flats.items()})
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, file_name(rank, size))
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)  # a reader never sees a half-written file under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def saved_size(directory: str) -> int:
    """N of the checkpoint in `directory` (ValueError: none, several, or files missing)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise ValueError(f"directory {directory!r}: no sharded checkpoint there ({exc.strerror})") from exc
    found: dict[int, set[int]] = {}
    for name in names:
        m = _NAME.match(name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise ValueError(f"directory {directory!r}: no sharded checkpoint there (no shard-<r>-of-<N>.npz files)")
    if len(found) > 1:
        raise ValueError(f"directory {directory!r} holds the files of checkpoints saved at "
                         f"{', '.join(map(str, sorted(found)))} ranks: one checkpoint per directory")
    (size, ranks), = found.items()
    missing = [file_name(r, size) for r in range(size) if r not in ranks]
    if missing:
        raise ValueError(f"directory {directory!r}: the checkpoint saved at {size} ranks lacks "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return size


def _header(f: Any, path: str, size: int, rank: int, lay: Layout) -> dict[str, Any]:
    """A file's header, checked against its name and the layout being loaded into."""
    def get(key: str) -> Any:
        if key not in f.files:
            raise ValueError(f"{path}: not a sharded checkpoint file (no {key!r})")
        return f[key]
    if str(get("format")) != FORMAT or int(get("format_version")) != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} of version {VERSION}")
    if int(get("size")) != size or int(get("rank")) != rank:
        raise ValueError(f"{path}: holds rank {int(get('rank'))} of {int(get('size'))}, not what its name says")
    saved = [[str(x) for x in get(k).reshape(-1)] for k in ("leaf_paths", "leaf_dtypes", "leaf_shapes")]
    mine = [[str(x) for x in v.reshape(-1)] for v in layout_entries(lay).values()]
    if saved != mine:
        raise ValueError(f"{path}: saved for other leaves ({_leaves(*saved)}) than the tree given "
                         f"({_leaves(*mine)})")
    start, end = data_range(lay.data, size, rank)
    if (int(get("start")), int(get("end"))) != (start, end):
        raise ValueError(f"{path}: covers bytes [{int(get('start'))}, {int(get('end'))}), expected [{start}, {end})")
    return {"checkpoint": int(get("checkpoint")), "names": [str(x) for x in get("flat_names").reshape(-1)]}


def _leaves(paths: list[str], dtypes: list[str], shapes: list[str]) -> str:
    shown = [f"{p or '(root)'}: {d} {s}" for p, d, s in zip(paths, dtypes, shapes)]
    return f"{len(shown)}: " + ", ".join(shown[:3]) + (" ..." if len(shown) > 3 else "")


def _scalars(f: Any, path: str, lay: Layout, saved: int, ident: int) -> dict[str, Any]:
    scalars = {k[len("state."):]: f[k] for k in f.files if k.startswith("state.")}
    if checkpoint_id(scalars, lay, saved) != ident:
        raise ValueError(f"{path}: its state does not match its checkpoint id (a damaged file?)")
    return scalars


def read(directory: str, lay: Layout, lo: int, hi: int, rank: int, size: int
         ) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
    """(the state without leaves, {name: the bytes [lo, hi) of the leaf data}, checkpoint id)
    from a checkpoint saved at any N; this rank (of `size`) also checks the headers of the
    files rank, rank + size, ... Raises ValueError naming the file on any mismatch."""
    saved = saved_size(directory)
    needed = [r for r in range(saved) if _overlap(data_range(lay.data, saved, r), lo, hi)]
    checked = sorted({0, *needed, *range(rank, saved, size)})  # file 0: what every file must match
    ident, names, scalars = None, None, None
    out: dict[str, np.ndarray] = {}
    for r in checked:
        path = os.path.join(directory, file_name(r, saved))
        try:
            f = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot be read ({exc})") from exc
        with f:
            head = _header(f, path, saved, r, lay)
            if ident is None:
                ident, names = head["checkpoint"], head["names"]
            elif head["checkpoint"] != ident or head["names"] != names:
                raise ValueError(f"{path}: belongs to another checkpoint than "
                                 f"{file_name(checked[0], saved)} (saved by another run or at another step)")
            if scalars is None:
                scalars = _scalars(f, path, lay, saved, ident)
            if r not in needed:
                continue
            start, end = data_range(lay.data, saved, r)
            a, b = max(start, lo), min(end, hi)
            for name in names or []:
                data = f[f"flat.{name}"]
                if data.dtype != np.uint8 or data.shape != (end - start,):
                    raise ValueError(f"{path}: flat.{name} holds {data.dtype} {data.shape}, expected uint8 "
                                     f"({end - start},)")
                buf = out.setdefault(name, np.zeros(hi - lo, np.uint8))
                buf[a - lo:b - lo] = data[a - start:b - start]
    for name in names or []:  # (a rank whose shard is empty reads no bytes)
        out.setdefault(name, np.zeros(hi - lo, np.uint8))
    assert ident is not None and scalars is not None
    return scalars, out, ident


def _overlap(rng: tuple[int, int], lo: int, hi: int) -> bool:
    return rng[0] < hi and lo < rng[1]
