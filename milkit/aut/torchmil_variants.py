"""torchmil's versions of the three tests (``torchmil.datasets``, v1.0.2), under their own names.

They cite Algorithms 1-3 but differ from the official notebook (see ``generators``):

* ``torchmil_single_concept`` (``SCStandardMILDataset``): a fixed number ``n_background`` of background
  instances per bag (torchmil's required ``B``; it has no default, 5 is ours); positives are N(0, 3) or N(1, 1)
  with equal probability (the notebook's dead branch "fixed").
* ``torchmil_multi_concept`` (``MCStandardMILDataset``): positives hold 1..3 (A, B) pairs, interleaved
  A, B, A, B ...; negatives one A or one B; poison in all training negatives and all test positives (never in
  training positives); background 1..9; no ``min_size``.
* ``torchmil_false_frequency`` (``FalseFrequencyMILDataset``): A = N(2, 0.1), B = N(3, 0.1); negatives hold
  1 (train) or 35..44 (test) copies of a concept that is always A (its ``randint(0, 1)``); background 1..9.

Upstream bug not copied: torchmil seeds NumPy but samples with torch's global RNG, so its ``seed`` does not
make the data reproducible; ours is seeded.
"""
from __future__ import annotations

import numpy as np

from milkit.aut.bags import AUTDataset, BagSet, gauss, mixture
from milkit.aut.generators import A, B, BG, POISON, POS, _check, _one_of, _segments, register_test

__all__ = ["torchmil_single_concept", "torchmil_multi_concept", "torchmil_false_frequency"]


def _split(make, n: int, train: bool) -> BagSet:
    return BagSet.concat([make(0, n // 2, train), make(1, n // 2, train)])


@register_test("torchmil_single_concept", "standard", "torchmil's Alg. 1 (fixed background count, N(1,1) positives)")
def torchmil_single_concept(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, n_background: int = 5,
                            seed: int = 0) -> AUTDataset:
    _check(n_train, n_test, d, n_background or None)
    rng = np.random.default_rng(seed)
    dists = {BG: gauss(0.0, 1.0), POS: mixture(gauss(0.0, 3.0), gauss(1.0, 1.0)), POISON: gauss(-10.0, 0.1)}

    def make(label: int, h: int, train: bool) -> BagSet:
        poison = np.full(h, int(train != bool(label)))  # train negatives and test positives
        parts = [((POISON,), poison)] + ([((POS,), rng.integers(1, 4, size=h))] if label else [])
        return _segments(rng, label, parts, (n_background, n_background), None, dists, d)

    return AUTDataset("torchmil_single_concept", "standard", _split(make, n_train, True), _split(make, n_test, False),
                      {"n_train": n_train, "n_test": n_test, "d": d, "n_background": n_background})


@register_test("torchmil_multi_concept", "threshold", "torchmil's Alg. 2 (A,B pairs, no poison in train positives)")
def torchmil_multi_concept(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, seed: int = 0) -> AUTDataset:
    _check(n_train, n_test, d, None)
    rng = np.random.default_rng(seed)
    dists = {BG: gauss(0.0, 1.0), A: gauss(2.0, 0.1), B: gauss(3.0, 0.1), POISON: gauss(-10.0, 0.1)}

    def make(label: int, h: int, train: bool) -> BagSet:
        poison = np.full(h, int(train != bool(label)))
        if label:
            parts = [((POISON,), poison), ((A, B), 2 * rng.integers(1, 4, size=h))]
        else:
            is_a = _one_of(rng, h, 2) == 0
            parts = [((POISON,), poison), ((A,), is_a), ((B,), ~is_a)]
        return _segments(rng, label, parts, (1, 9), None, dists, d)

    return AUTDataset("torchmil_multi_concept", "threshold", _split(make, n_train, True), _split(make, n_test, False),
                      {"n_train": n_train, "n_test": n_test, "d": d})


@register_test("torchmil_false_frequency", "threshold", "torchmil's Alg. 3 (A=N(2,.1), B=N(3,.1), 35..44 copies of A)")
def torchmil_false_frequency(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, seed: int = 0) -> AUTDataset:
    _check(n_train, n_test, d, None)
    rng = np.random.default_rng(seed)
    dists = {BG: gauss(0.0, 1.0), A: gauss(2.0, 0.1), B: gauss(3.0, 0.1)}

    def make(label: int, h: int, train: bool) -> BagSet:
        one = np.ones(h, dtype=np.int64)
        if label:
            parts = [((A,), one), ((B,), one)]
        else:
            parts = [((A,), one if train else rng.integers(35, 45, size=h))]
        return _segments(rng, label, parts, (1, 9), None, dists, d)

    return AUTDataset("torchmil_false_frequency", "threshold", _split(make, n_train, True), _split(make, n_test, False),
                      {"n_train": n_train, "n_test": n_test, "d": d})
