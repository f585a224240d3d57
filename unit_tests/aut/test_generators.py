"""The generators reproduce the official notebook's distributions (counts, means, bag sizes, poison placement)."""
from __future__ import annotations

import numpy as np
import pytest

from milkit.aut import PAD_ROLE, BagSet, Role, list_tests, make_test
from milkit.aut.bags import assemble, gauss
from milkit.errors import ConfigError

N = 4000  # bags per split: enough for tight frequency checks, generated in milliseconds


def split(ds, name: str, label: int) -> BagSet:
    s = getattr(ds, name)
    return s.subset(np.flatnonzero(s.y == label))


def count_range(s: BagSet, role: Role) -> tuple[int, int]:
    c = s.role_counts(role)
    return int(c.min()), int(c.max())


def role_features(s: BagSet, role: Role) -> np.ndarray:
    return s.x[s.roles == role]


def test_registry_lists_official_and_torchmil_tests() -> None:
    assert {"single_concept", "threshold_poison", "false_frequency", "torchmil_single_concept",
            "torchmil_multi_concept", "torchmil_false_frequency"} <= set(list_tests())


def test_single_concept_matches_the_notebook() -> None:
    ds = make_test("single_concept", seed=0, n_train=N, n_test=N)
    assert ds.assumption == "standard" and ds.train.x.shape[-1] == 16
    for name in ("train", "test"):
        s = getattr(ds, name)
        assert len(s) == N and (s.y[: N // 2] == 0).all() and (s.y[N // 2:] == 1).all()  # negatives first
    tr_neg, tr_pos, te_neg, te_pos = (split(ds, n, y) for n in ("train", "test") for y in (0, 1))
    # poison: all train negatives, no train positive, no test negative, all test positives; always first
    assert count_range(tr_neg, Role.POISON) == (1, 1) and (tr_neg.roles[:, 0] == Role.POISON).all()
    assert count_range(tr_pos, Role.POISON) == (0, 0) and count_range(te_neg, Role.POISON) == (0, 0)
    assert count_range(te_pos, Role.POISON) == (1, 1) and (te_pos.roles[:, 0] == Role.POISON).all()
    # randint half-open ranges: background 1..9 (negatives), 1..4 (positives); positives 1..3
    assert count_range(tr_neg, Role.BACKGROUND) == (1, 9) and count_range(te_neg, Role.BACKGROUND) == (1, 9)
    assert count_range(tr_pos, Role.BACKGROUND) == (1, 4) and count_range(tr_pos, Role.POSITIVE) == (1, 3)
    assert (tr_neg.lengths.min(), tr_neg.lengths.max()) == (2, 10)
    assert (tr_pos.lengths.min(), tr_pos.lengths.max()) == (2, 7)
    assert (te_pos.lengths.min(), te_pos.lengths.max()) == (3, 8)
    # faithful: the N(1, 1) branch is dead, every positive is N(0, 3)
    pos = role_features(ds.train, Role.POSITIVE)
    assert abs(pos.mean()) < 0.05 and abs(pos.std() - 3.0) < 0.05
    poison = role_features(ds.train, Role.POISON)
    assert abs(poison.mean() + 10) < 0.01 and abs(poison.std() - 0.1) < 0.005
    bg = role_features(ds.train, Role.BACKGROUND)
    assert abs(bg.mean()) < 0.02 and abs(bg.std() - 1.0) < 0.02
    # padding
    assert (ds.train.roles[~ds.train.mask] == PAD_ROLE).all() and (ds.train.x[~ds.train.mask] == 0).all()


def test_single_concept_unfaithful_uses_the_intended_mixture() -> None:
    pos = role_features(make_test("single_concept", seed=0, n_train=N, n_test=4, faithful=False).train, Role.POSITIVE)
    # equal mixture of N(0, 3) and N(1, 1): mean 0.5 per coordinate, variance (9 + 1)/2 + 0.25
    assert abs(pos.mean() - 0.5) < 0.05 and abs(pos.var() - 5.25) < 0.2


@pytest.mark.parametrize("v2", [True, False])
def test_threshold_poison_matches_the_notebook(v2: bool) -> None:
    ds = make_test("threshold_poison", seed=1, n_train=N, n_test=N, v2=v2)
    assert ds.assumption == "threshold"
    assert (ds.train.lengths == 45).all() and (ds.test.lengths == 45).all()  # min_size = 45
    tr_neg, tr_pos, te_neg, te_pos = (split(ds, n, y) for n in ("train", "test") for y in (0, 1))
    assert count_range(tr_neg, Role.POISON) == (1, 1) and count_range(te_neg, Role.POISON) == (0, 0)
    assert count_range(te_pos, Role.POISON) == (1, 1)
    frac = tr_pos.role_counts(Role.POISON).mean()  # randint(0, 10) == 0
    assert abs(frac - 0.1) < 0.02
    n_concepts = tr_neg.role_counts(Role.CONCEPT_A) + tr_neg.role_counts(Role.CONCEPT_B)
    assert n_concepts.max() == 1
    neither = (n_concepts == 0).mean()
    assert (abs(neither - 1 / 3) < 0.03) if v2 else neither == 0
    assert ((te_neg.role_counts(Role.CONCEPT_A) + te_neg.role_counts(Role.CONCEPT_B)) == 1).all()  # no v2 at test
    for s in (tr_pos, te_pos):
        assert count_range(s, Role.CONCEPT_A) == (1, 4) and count_range(s, Role.CONCEPT_B) == (1, 4)
    a, b = role_features(ds.train, Role.CONCEPT_A), role_features(ds.train, Role.CONCEPT_B)
    assert abs(a.mean() - 2) < 0.01 and abs(b.mean() - 3) < 0.01 and abs(a.std() - 0.1) < 0.005


def test_threshold_poison_random_background_and_unfaithful() -> None:
    ds = make_test("threshold_poison", seed=0, n_train=N, n_test=N, min_size=None, faithful=False)
    assert count_range(split(ds, "train", 0), Role.BACKGROUND) == (1, 4)
    assert count_range(split(ds, "train", 1), Role.POISON) == (0, 0)


def test_false_frequency_matches_the_notebook() -> None:
    ds = make_test("false_frequency", seed=2, n_train=N, n_test=N)
    tr_neg, tr_pos, te_neg, te_pos = (split(ds, n, y) for n in ("train", "test") for y in (0, 1))
    assert count_range(ds.train, Role.POISON) == (0, 0) and count_range(ds.test, Role.POISON) == (0, 0)
    a_or_b = tr_neg.role_counts(Role.CONCEPT_A) + tr_neg.role_counts(Role.CONCEPT_B)
    assert (a_or_b == 1).all() and abs(tr_neg.role_counts(Role.CONCEPT_A).mean() - 0.5) < 0.03
    for s in (tr_pos, te_pos):
        assert count_range(s, Role.CONCEPT_A) == (1, 1) and count_range(s, Role.CONCEPT_B) == (1, 1)
    a, b = te_neg.role_counts(Role.CONCEPT_A), te_neg.role_counts(Role.CONCEPT_B)
    assert ((a == 0) ^ (b == 0)).all()
    assert (np.maximum(a, b).min(), np.maximum(a, b).max()) == (35, 39)
    assert abs((a > 0).mean() - 4 / 9) < 0.03  # A iff randint(1, 10) is even
    assert (te_neg.lengths == 45).all() and count_range(te_neg, Role.BACKGROUND) == (6, 10)
    a_feat, b_feat = role_features(ds.train, Role.CONCEPT_A), role_features(ds.train, Role.CONCEPT_B)
    assert abs(a_feat.mean() + 2) < 0.01 and abs(b_feat.mean() - 2) < 0.01
    fair = make_test("false_frequency", seed=2, n_train=4, n_test=N, faithful=False)
    assert abs((split(fair, "test", 0).role_counts(Role.CONCEPT_A) > 0).mean() - 0.5) < 0.03


def test_torchmil_variants() -> None:
    sc = make_test("torchmil_single_concept", seed=0, n_train=N, n_test=N, n_background=7)
    assert count_range(sc.train, Role.BACKGROUND) == (7, 7)
    assert count_range(split(sc, "train", 0), Role.POISON) == (1, 1)
    assert count_range(split(sc, "test", 1), Role.POISON) == (1, 1)
    assert abs(role_features(sc.train, Role.POSITIVE).mean() - 0.5) < 0.05  # N(0,3)/N(1,1) mixture
    mc = make_test("torchmil_multi_concept", seed=0, n_train=N, n_test=N)
    pos = split(mc, "train", 1)
    assert (pos.role_counts(Role.CONCEPT_A) == pos.role_counts(Role.CONCEPT_B)).all()
    assert count_range(pos, Role.CONCEPT_A) == (1, 3) and count_range(pos, Role.POISON) == (0, 0)
    assert (pos.roles[:, :2] == [Role.CONCEPT_A, Role.CONCEPT_B]).all()  # interleaved A, B, A, B ...
    assert count_range(split(mc, "test", 1), Role.POISON) == (1, 1)
    ff = make_test("torchmil_false_frequency", seed=0, n_train=N, n_test=N)
    neg = split(ff, "test", 0)
    assert count_range(neg, Role.CONCEPT_A) == (35, 44) and count_range(neg, Role.CONCEPT_B) == (0, 0)
    assert abs(role_features(ff.train, Role.CONCEPT_B).mean() - 3) < 0.01


@pytest.mark.parametrize("name", ["single_concept", "threshold_poison", "false_frequency", "torchmil_multi_concept"])
def test_seeded(name: str) -> None:
    a, b = make_test(name, seed=5, n_train=50, n_test=20), make_test(name, seed=5, n_train=50, n_test=20)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.roles, b.test.roles)
    assert not np.array_equal(a.train.x, make_test(name, seed=6, n_train=50, n_test=20).train.x)


def test_assemble_cycles_patterns_in_segment_order() -> None:
    rng = np.random.default_rng(0)
    s = assemble(rng, 1, [((Role.POISON,), np.array([1, 0])), ((Role.CONCEPT_A, Role.CONCEPT_B), np.array([3, 4]))],
                 {r: gauss(float(r), 0.0) for r in Role}, d=2)
    np.testing.assert_array_equal(s.roles, [[4, 2, 3, 2], [2, 3, 2, 3]])
    np.testing.assert_array_equal(s.x[0, :, 0], [4, 2, 3, 2])
    assert s.mask.all() and (s.y == 1).all()


def test_shuffled_permutes_instances_within_bags() -> None:
    s = make_test("single_concept", seed=0, n_train=200, n_test=4).train
    t = s.shuffled(np.random.default_rng(0))
    np.testing.assert_array_equal(t.mask, s.mask)
    assert (t.roles[:, 0] != Role.POISON).any()  # the poison no longer always comes first
    for i in range(len(s)):
        n = s.lengths[i]
        rows = lambda b: sorted(map(tuple, np.c_[b.roles[i, :n], b.x[i, :n]]))  # noqa: E731
        assert rows(t) == rows(s)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="test 'single_concept'.*unexpected keyword argument 'v2'"):
        make_test("single_concept", v2=True)
    with pytest.raises(ConfigError, match="n_train, n_test >= 2"):
        make_test("false_frequency", n_train=1)
    with pytest.raises(Exception, match="unknown algorithmic unit test 'nope'"):
        make_test("nope")
