"""NumPy reference of the fixed summation order of the LBFGS and Muon passes
(csrc/optim/flat_sum.h): 2048-element chunks; in a chunk, element i adds its
double term to lane i mod 16; a chunk's total is its lanes in order; the total
is the chunks' totals in order, from 0.0."""
import numpy as np

CHUNK, LANES = 2048, 16


def fixed_sum(terms):
    terms = np.asarray(terms, np.float64)
    total = 0.0
    for c in range(0, terms.size, CHUNK):
        chunk = terms[c:c + CHUNK]
        acc = np.zeros(LANES)
        for r in range(0, chunk.size, LANES):
            row = chunk[r:r + LANES]
            acc[:row.size] += row
        chunk_total = 0.0
        for j in range(LANES):
            chunk_total += acc[j]
        total += chunk_total
    return total


def dot(a, b):
    return fixed_sum(a.astype(np.float64) * b.astype(np.float64))
