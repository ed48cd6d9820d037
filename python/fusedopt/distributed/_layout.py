"""How fusedopt.distributed lays a gradient tree out for MPI and cuts it into shards.

The leaves go end to end into one byte buffer: every float64 leaf in tree
order, then every float32 leaf (so no padding between them); the total is
padded to 64 bytes. That buffer is what the collectives move. Rank ``r`` owns
the byte range ``bounds[r]``: consecutive 64-byte aligned ranges of
``ceil(total / N)`` bytes rounded up to 64, so a leaf may straddle shards and
trailing ranks may own nothing. The collectives move and average only the
data (``counts``: the bounds cut at its end, never the padding), so a tree of
one C-contiguous leaf can be exchanged straight from the caller's array. A
rank's shard is stepped as a list of 1-D pieces (the parts of the leaves in
its range), views into its shard buffers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core

ALIGN = 64
_ITEM = {"float32": 4, "float64": 8}


def round_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def aligned_bytes(nbytes: int, zero: bool = True) -> np.ndarray:
    """A uint8 buffer whose data starts on a 64-byte boundary (zeroed unless told)."""
    buf = _core.aligned_empty(round_up(nbytes) // 8, "float64").view(np.uint8)[:nbytes]
    if zero:
        buf[...] = 0
    return buf


def layout_hash(*parts: Any) -> int:
    """A 62-bit hash (so that it and its negation fit an int64 for a MAX allreduce)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def shard_bounds(data: int, size: int) -> tuple[int, list[tuple[int, int]]]:
    """(a shard's stride, each rank's byte range of the padded flat buffer) for `data` bytes of
    leaves on `size` ranks. No padding inside the data, so a rank holds at most
    ceil(data / N) + 63 bytes of it."""
    nbytes = round_up(data)
    per_rank = round_up(-(-data // size)) if data else 0
    return per_rank, [(min(r * per_rank, nbytes), min((r + 1) * per_rank, nbytes)) for r in range(size)]


def data_range(data: int, size: int, rank: int) -> tuple[int, int]:
    """The bytes of leaf data in rank `rank`'s shard (its range cut at the end of the data)."""
    a, b = shard_bounds(data, size)[1][rank]
    return min(a, data), max(min(a, data), min(b, data))


@dataclass(frozen=True)
class Part:
    """The float32 or float64 part of a shard: `count` elements from byte `offset` of the shard."""

    offset: int
    count: int


class Layout:
    """Flat offsets, shard bounds and this rank's pieces for one tree structure."""

    def __init__(self, plan: Any, size: int, rank: int) -> None:
        self.plan = plan
        self.size, self.rank = size, rank
        self.paths: list[str] = list(plan.paths)
        self.shapes: list[tuple[int, ...]] = [tuple(s) for s in plan.shapes]
        self.dtypes: list[str] = list(plan.leaf_dtypes)
        self.sizes: list[int] = list(plan.leaf_sizes)
        offsets = [0] * len(self.paths)
        pos = 0
        for dtype in ("float64", "float32"):
            for leaf, d in enumerate(self.dtypes):
                if d == dtype:
                    offsets[leaf] = pos
                    pos += _ITEM[d] * self.sizes[leaf]
            if dtype == "float64":
                self.split = pos  # where the float32 leaves start
        self.offsets = offsets
        self.data = pos  # bytes of data, before the end padding
        self.nbytes = round_up(pos)
        self.pack = _core.FlatPack(self.paths, self.shapes, self.dtypes, offsets)
        per_rank, self.bounds = shard_bounds(pos, size)
        self.counts = [max(0, min(b, pos) - a) for a, b in self.bounds]  # each shard's data bytes
        self.displs = [min(a, pos) for a, _ in self.bounds]
        # The all-gather: MPI's Allgather of N blocks of per_rank bytes (MPICH runs it about twice
        # as fast as Allgatherv) into gather_buffer()s, padded to hold them all. Only a one-leaf
        # layout can gather into a caller's array instead, and whether a rank does depends on
        # that array, which ranks do not agree on; so the layout decides, alike on every rank:
        # a one-leaf layout whose last shard is short takes Allgatherv (gather_blocks 0), so a
        # caller's array is never touched past its bytes.
        self.block = per_rank  # a shard's stride
        self.gather_nbytes = max(size * per_rank, self.nbytes)
        self.single = len(self.paths) == 1  # the one leaf is the whole data: see FlatPack.flat_view
        self.gather_blocks = size * per_rank if per_rank and (not self.single or pos == size * per_rank) else 0
        self.lo, self.hi = self.bounds[rank]
        self.part32, self.part64 = self._parts(self.lo, self.lo + self.counts[rank])
        # The deterministic exchange: this rank's own block stays where it is (count 0 to itself).
        n = self.hi - self.lo
        self.send_counts = [0 if r == rank else c for r, c in enumerate(self.counts)]
        self.recv_counts = [0 if r == rank else self.counts[rank] for r in range(size)]
        self.recv_displs = [n * (r - (r > rank)) if r != rank else 0 for r in range(size)]  # no row for itself
        self._build_pieces()
        self.send = aligned_bytes(self.nbytes)  # this rank's gradient, packed
        self.bufs: dict[Any, Any] = {}           # the wrapper's buffers, by path kind
        self._hashes: dict[Any, int] = {}

    def _parts(self, lo: int, hi: int) -> tuple[Part, Part]:
        """The float32 and float64 parts of the byte range [lo, hi)."""
        n64 = max(0, min(hi, self.split) - lo) // 8
        start32 = min(max(lo, self.split), hi)
        return Part(start32 - lo, (hi - start32) // 4), Part(0, n64)

    def region(self, dtype: str) -> tuple[int, int]:
        """The byte range of the float64 leaves, or of the float32 ones."""
        return (0, self.split) if dtype == "float64" else (self.split, self.data)

    def region_counts(self, dtype: str) -> list[int]:
        """Elements of each rank's shard in the region of `dtype`."""
        lo_r, hi_r = self.region(dtype)
        return [max(0, min(b, hi_r) - max(a, lo_r)) // _ITEM[dtype] for a, b in self.bounds]

    def _build_pieces(self) -> None:
        """This rank's pieces: (leaf, first element, end element) of each leaf part in [lo, hi)."""
        pieces = []
        for leaf, (off, dtype, n) in enumerate(zip(self.offsets, self.dtypes, self.sizes)):
            item = _ITEM[dtype]
            b, e = max(self.lo, off), min(self.hi, off + item * n)
            if e > b:
                pieces.append((leaf, (b - off) // item, (e - off) // item, b - self.lo))
        self.pieces = pieces
        if pieces:
            paths = [f"{self.paths[leaf] or 'root'}[{b}:{e}]" for leaf, b, e, _ in pieces]
            shapes = [(e - b,) for _, b, e, _ in pieces]
            dtypes = [self.dtypes[leaf] for leaf, _, _, _ in pieces]
            offsets = [off for _, _, _, off in pieces]
        else:  # an empty shard still steps (one empty piece), so every rank runs the same code
            paths, shapes, dtypes, offsets = ["(empty shard)"], [(0,)], ["float32"], [0]
        self.shard_pack = _core.FlatPack(paths, shapes, dtypes, offsets)

    def gather_buffer(self, zero: bool = True) -> np.ndarray:
        """A flat buffer the all-gather fills with Allgather (gather_nbytes; its views use nbytes)."""
        return aligned_bytes(self.gather_nbytes, zero)

    @property
    def shard_nbytes(self) -> int:
        return self.hi - self.lo

    def hash(self, *extra: Any) -> int:
        """Hash of the paths, shapes and dtypes with `extra` (memoized: called every step)."""
        h = self._hashes.get(extra)
        if h is None:
            h = self._hashes[extra] = layout_hash(self.paths, self.shapes, self.dtypes, *extra)
        return h

    def describe(self) -> list[str]:
        return [f"{p or '(root)'}: {d} {s}" for p, d, s in zip(self.paths, self.dtypes, self.shapes)]

    def shard_pieces(self, shard: np.ndarray) -> list[np.ndarray]:
        """1-D views of this rank's pieces into a buffer holding its shard."""
        return list(self.shard_pack.views(shard))

    def tree(self, flat: np.ndarray) -> Any:
        """A tree of the plan's structure whose leaves are views into a full flat buffer."""
        return self.plan.unflatten(self.pack.views(flat))
