"""The three algorithmic unit tests of Raff & Holt (NeurIPS 2023), as in the authors' official notebook.

Facts from ``ReproducibilityMIL.ipynb`` (commit 8218b04), re-implemented (not copied) with a seeded
``np.random.Generator`` and vectorised sampling. Every distribution is isotropic, ``N(mu·1, sigma²·I)``;
background ``N(0, 1)``; poison ``N(-10, 0.1)``. Each split holds ``n // 2`` negatives then ``n // 2`` positives.
Instances keep the notebook's order inside a bag (poison, concepts, background), which matters only for
order-dependent models. Background is either a random count or, with ``min_size``, appended until the bag
has ``min_size`` instances (none when it already has that many).

``faithful=True`` (the default) keeps the notebook's quirks; ``faithful=False`` gives the intended variant and
is reported under its own label:

* Test 1: the notebook's ``randint(0, 1) == 0`` branch is always true, so every positive instance is N(0, 3);
  the intended N(0, 3) / N(1, 1) 50/50 mixture is used only with ``faithful=False``.
* Test 2: 1 in 10 training positives also carries a poison (``randint(0, 10) == 0``); none with ``faithful=False``.
* Test 3: test negatives hold concept A when ``randint(1, 10)`` is even (p = 4/9), else B; 1/2 with ``faithful=False``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from milkit.aut.bags import AUTDataset, BagSet, Role, assemble, gauss, mixture
from milkit.errors import ConfigError, MILKitError
from milkit.registry import Registry

__all__ = ["AUT_TESTS", "register_test", "make_test", "list_tests", "single_concept", "threshold_poison",
           "false_frequency"]

AUT_TESTS: Registry[AUTDataset] = Registry("algorithmic unit test")

BG, POS, A, B, POISON = Role.BACKGROUND, Role.POSITIVE, Role.CONCEPT_A, Role.CONCEPT_B, Role.POISON


def register_test(name: str, assumption: str, description: str) -> Callable:
    """Register a generator ``fn(n_train, n_test, d, seed, **kw) -> AUTDataset``."""
    if assumption not in {"standard", "threshold"}:
        raise ValueError(f"assumption must be 'standard' or 'threshold', got '{assumption}'")
    return AUT_TESTS.register(name, assumption=assumption, description=description)


def make_test(name: str, seed: int = 0, **kwargs: Any) -> AUTDataset:
    """Generate a registered test; unknown keyword arguments are a ``ConfigError``. Unlike ``Registry.create``,
    ``None`` is passed on (``min_size=None`` means random bag sizes)."""
    try:
        factory = AUT_TESTS.get(name).factory
    except MILKitError as err:
        raise ConfigError(str(err)) from None
    try:
        return factory(seed=seed, **kwargs)
    except TypeError as err:
        raise ConfigError(f"test '{name}': {err}") from None


def list_tests() -> list[str]:
    return AUT_TESTS.names()


def _check(n_train: int, n_test: int, d: int, min_size: int | None) -> None:
    if n_train < 2 or n_test < 2 or d < 1 or (min_size is not None and min_size < 1):
        raise ConfigError(f"need n_train, n_test >= 2, d >= 1, min_size >= 1; got {n_train}, {n_test}, {d}, {min_size}")


def _background(rng: np.random.Generator, others: np.ndarray, lo: int, hi: int, min_size: int | None) -> np.ndarray:
    """Background count per bag: uniform on ``lo..hi`` (inclusive), or the fill up to ``min_size``."""
    if min_size is None:
        return rng.integers(lo, hi + 1, size=others.shape[0])
    return np.maximum(0, min_size - others)


def _one_of(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Uniform choice among ``k`` options per bag."""
    return rng.integers(0, k, size=n)


def _segments(rng: np.random.Generator, label: int, parts: list[tuple[tuple[Role, ...], np.ndarray]],
              bg_range: tuple[int, int], min_size: int | None, dists: dict, d: int) -> BagSet:
    others = np.sum([c for _, c in parts], axis=0)
    bg = _background(rng, others, *bg_range, min_size)
    return assemble(rng, label, parts + [((BG,), bg)], dists, d)


@register_test("single_concept", "standard", "Alg. 1: single-concept standard MIL; poison moves into positives")
def single_concept(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, min_size: int | None = None,
                   faithful: bool = True, seed: int = 0) -> AUTDataset:
    """Test 1 (``falseNegativeMIL``). Train: negatives = poison + 1..9 background; positives = 1..3 positive
    instances + 1..4 background. Test: the poison leaves the negatives and enters every positive."""
    _check(n_train, n_test, d, min_size)
    rng = np.random.default_rng(seed)
    positive = gauss(0.0, 3.0) if faithful else mixture(gauss(0.0, 3.0), gauss(1.0, 1.0))
    dists = {BG: gauss(0.0, 1.0), POS: positive, POISON: gauss(-10.0, 0.1)}

    def split(n: int, poison_in_positives: bool) -> BagSet:
        h = n // 2
        neg = _segments(rng, 0, [((POISON,), np.full(h, int(not poison_in_positives)))], (1, 9), min_size, dists, d)
        pos = _segments(rng, 1, [((POISON,), np.full(h, int(poison_in_positives))),
                                 ((POS,), rng.integers(1, 4, size=h))], (1, 4), min_size, dists, d)
        return BagSet.concat([neg, pos])

    train, test = split(n_train, False), split(n_test, True)
    return AUTDataset("single_concept", "standard", train, test,
                      {"n_train": n_train, "n_test": n_test, "d": d, "min_size": min_size, "faithful": faithful})


@register_test("threshold_poison", "threshold", "Alg. 2: A AND B required; poison in negatives moves into positives")
def threshold_poison(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, min_size: int | None = 45,
                     v2: bool = True, faithful: bool = True, seed: int = 0) -> AUTDataset:
    """Test 2 (``falseConceptPairMIL``), A = N(2, 0.1), B = N(3, 0.1). Train negatives: poison + one A or one B
    (v2: A, B or neither). Train positives: 1..4 A + 1..4 B (+ poison in 1/10 when faithful). Test negatives:
    one A or one B. Test positives: poison + 1..4 A + 1..4 B. Random background is 1..4."""
    _check(n_train, n_test, d, min_size)
    rng = np.random.default_rng(seed)
    dists = {BG: gauss(0.0, 1.0), A: gauss(2.0, 0.1), B: gauss(3.0, 0.1), POISON: gauss(-10.0, 0.1)}

    def negatives(h: int, poison: int, n_options: int) -> BagSet:
        choice = _one_of(rng, h, n_options)
        parts = [((POISON,), np.full(h, poison)), ((A,), choice == 0), ((B,), choice == 1)]
        return _segments(rng, 0, parts, (1, 4), min_size, dists, d)

    def positives(h: int, poison: np.ndarray) -> BagSet:
        parts = [((POISON,), poison), ((A,), rng.integers(1, 5, size=h)), ((B,), rng.integers(1, 5, size=h))]
        return _segments(rng, 1, parts, (1, 4), min_size, dists, d)

    h = n_train // 2
    train_poison = (rng.integers(0, 10, size=h) == 0) if faithful else np.zeros(h, dtype=bool)
    train = BagSet.concat([negatives(h, 1, 3 if v2 else 2), positives(h, train_poison)])
    t = n_test // 2
    test = BagSet.concat([negatives(t, 0, 2), positives(t, np.ones(t, dtype=bool))])
    return AUTDataset("threshold_poison", "threshold", train, test,
                      {"n_train": n_train, "n_test": n_test, "d": d, "min_size": min_size, "v2": v2,
                       "faithful": faithful})


@register_test("false_frequency", "threshold", "Alg. 3: A AND B required; test negatives hold 35..39 copies of one")
def false_frequency(n_train: int = 10_000, n_test: int = 1_000, d: int = 16, min_size: int | None = 45,
                    faithful: bool = True, seed: int = 0) -> AUTDataset:
    """Test 3 (``falseFrequencyMIL``), A = N(-2, 0.1), B = N(2, 0.1), no poison. Train negatives: one A or one B;
    positives: one A + one B. Test negatives: 35..39 copies of A (p = 4/9 faithful, else 1/2) or of B; test
    positives as in training. Random background is 1..9."""
    _check(n_train, n_test, d, min_size)
    rng = np.random.default_rng(seed)
    dists = {BG: gauss(0.0, 1.0), A: gauss(-2.0, 0.1), B: gauss(2.0, 0.1)}

    def bags(label: int, n_a: np.ndarray, n_b: np.ndarray) -> BagSet:
        return _segments(rng, label, [((A,), n_a), ((B,), n_b)], (1, 9), min_size, dists, d)

    def positives(h: int) -> BagSet:
        return bags(1, np.ones(h, dtype=np.int64), np.ones(h, dtype=np.int64))

    h = n_train // 2
    is_a = _one_of(rng, h, 2) == 0
    train = BagSet.concat([bags(0, is_a, ~is_a), positives(h)])
    t = n_test // 2
    is_a = (rng.integers(1, 10, size=t) % 2 == 0) if faithful else (_one_of(rng, t, 2) == 0)
    copies = rng.integers(35, 40, size=t)
    test = BagSet.concat([bags(0, copies * is_a, copies * ~is_a), positives(t)])
    return AUTDataset("false_frequency", "threshold", train, test,
                      {"n_train": n_train, "n_test": n_test, "d": d, "min_size": min_size, "faithful": faithful})
