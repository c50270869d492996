"""Label noise: exact counts, structure of each kind, seeds and hashes, bad input."""

import hashlib

import numpy as np
import pytest

from calibrate_cli.errors import UsageError
from calibrate_cli.train.noise import (apply_noise, label_hash, load_noisy_labels, parse_noise,
                                       save_noisy_labels)


def balanced(classes, per_class):
    return np.repeat(np.arange(classes, dtype=np.int64), per_class)


def test_parse_noise_forms():
    assert parse_noise("none") == ("none", 0.0)
    assert parse_noise("0") == ("none", 0.0)
    assert parse_noise("0.4") == ("symmetric", 0.4)
    assert parse_noise("Symmetric:0.2") == ("symmetric", 0.2)
    assert parse_noise("sym:0.2") == ("symmetric", 0.2)
    assert parse_noise("pair-flip:0.3") == ("pairflip", 0.3)
    assert parse_noise("asymmetric-literature:0.4") == ("asymmetric-literature", 0.4)
    assert parse_noise("matrix:/a/b:c.npy") == ("matrix", "/a/b:c.npy")


@pytest.mark.parametrize("spec", ["symmetric:1", "symmetric:1.5", "symmetric:-0.1", "1.0",
                                  "pairflip:nan", "symmetric:abc", "bogus:0.2", "matrix:",
                                  "cifar100-block:inf"])
def test_bad_specs_rejected(spec):
    with pytest.raises(UsageError):
        parse_noise(spec)


def test_symmetric_exact_counts_and_other_class():
    # unequal class sizes: round(R n_c) per class, half up
    sizes = np.array([10, 25, 7, 40, 13])
    y = np.repeat(np.arange(5), sizes)
    r = apply_noise(y, "symmetric:0.3", 5, seed=3)
    changed = r.labels != y
    for c, n in enumerate(sizes):
        assert changed[y == c].sum() == int(np.floor(0.3 * n + 0.5))
    assert r.rate == pytest.approx(changed.mean())
    assert np.allclose(r.per_class_rate, [changed[y == c].mean() for c in range(5)])
    assert r.spec == "symmetric:0.3"


def test_symmetric_targets_uniform_over_other_classes():
    k = 5
    y = balanced(k, 20000)
    r = apply_noise(y, "symmetric:0.5", k, seed=0)
    t = r.transition
    assert np.allclose(np.diag(t), 0.5)
    off = t[~np.eye(k, dtype=bool)]
    # each off-diagonal entry is 0.5/(K-1) = 0.125; binomial sd ~ 0.002
    assert np.abs(off - 0.125).max() < 0.01
    assert np.allclose(t.sum(axis=1), 1)


def test_same_seed_same_labels_and_hash_different_seed_differs():
    y = balanced(10, 100)
    a = apply_noise(y, "symmetric:0.4", 10, seed=7)
    b = apply_noise(y, "symmetric:0.4", 10, seed=7)
    c = apply_noise(y, "symmetric:0.4", 10, seed=8)
    assert np.array_equal(a.labels, b.labels) and a.hash == b.hash
    assert not np.array_equal(a.labels, c.labels) and a.hash != c.hash
    # hash = first 16 hex of sha256 of int64 little-endian bytes (independent computation)
    expect = hashlib.sha256(a.labels.astype("<i8").tobytes()).hexdigest()[:16]
    assert a.hash == expect == label_hash(a.labels)


def test_zero_rate_is_identity():
    y = balanced(4, 10)
    for spec in ("none", "0", "symmetric:0", "pairflip:0"):
        r = apply_noise(y, spec, 4, seed=1)
        assert np.array_equal(r.labels, y) and r.rate == 0


def test_asymmetric_per_original_label():
    y = balanced(10, 1000)
    r = apply_noise(y, "asymmetric:0.4", 10, seed=2, dataset="cifar10")
    expect = np.zeros(10)
    expect[[9, 2, 3, 5, 4]] = 0.4
    assert np.allclose(r.per_class_rate, expect)
    assert r.rate == pytest.approx(0.2)
    for s, t in ((9, 1), (2, 0), (3, 5), (5, 3), (4, 7)):
        assert r.transition[s, t] == pytest.approx(0.4)
        assert set(np.unique(r.labels[y == s])) == {s, t}


def test_asymmetric_literature_reproduces_sequential_artefact():
    # expected effective rates: cat R(1-R), overall R(5-R)/10 (peers digest A.3)
    y = balanced(10, 5000)
    r = apply_noise(y, "asymmetric-literature:0.4", 10, seed=0)
    assert r.per_class_rate[3] == pytest.approx(0.24, abs=0.01)
    assert r.rate == pytest.approx(0.184, abs=0.003)
    for c in (9, 2, 4):
        assert r.per_class_rate[c] == pytest.approx(0.4)
    assert r.per_class_rate[5] == pytest.approx(0.4, abs=0.01)


def test_asymmetric_rejected_off_cifar10():
    with pytest.raises(UsageError):
        apply_noise(balanced(12, 5), "asymmetric:0.2", 12, seed=0)
    with pytest.raises(UsageError):
        apply_noise(balanced(10, 5), "asymmetric:0.2", 10, seed=0, dataset="glyphs")


def test_cifar100_block_structure():
    y = balanced(100, 20)
    r = apply_noise(y, "cifar100-block:0.4", 100, seed=0)
    assert np.allclose(r.per_class_rate, 0.4)
    for c in range(100):
        target = 5 * (c // 5) + (c + 1) % 5
        assert r.transition[c, target] == pytest.approx(0.4)
        assert r.transition[c, c] == pytest.approx(0.6)
    with pytest.raises(UsageError):
        apply_noise(balanced(12, 5), "cifar100-block:0.2", 12, seed=0)


def test_cifar100_superclass_follows_coarse_labels():
    # 8 fine classes in 3 coarse groups that are not index blocks
    fine_to_coarse = np.array([2, 0, 1, 0, 2, 1, 0, 2])
    y = balanced(8, 10)
    coarse = fine_to_coarse[y]
    r = apply_noise(y, "cifar100-superclass:0.5", 8, seed=1, coarse=coarse)
    assert np.array_equal(fine_to_coarse[r.labels], coarse)  # never leaves the super-class
    assert np.allclose(r.per_class_rate, 0.5)
    # next member by index, cyclically: group 0 = {1, 3, 6}: 1->3, 3->6, 6->1
    assert r.transition[1, 3] == r.transition[3, 6] == r.transition[6, 1] == 0.5
    with pytest.raises(UsageError):
        apply_noise(y, "cifar100-superclass:0.5", 8, seed=1)


def test_pairflip():
    y = balanced(6, 10)
    r = apply_noise(y, "pairflip:0.3", 6, seed=0)
    for c in range(6):
        assert r.transition[c, (c + 1) % 6] == pytest.approx(0.3)
    assert r.rate == pytest.approx(0.3)


def test_matrix_file_npy_and_csv(tmp_path):
    t = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    np.save(tmp_path / "t.npy", t)
    np.savetxt(tmp_path / "t.csv", t, delimiter=",")
    y = balanced(3, 10)
    a = apply_noise(y, f"matrix:{tmp_path / 't.npy'}", 3, seed=0)
    b = apply_noise(y, f"matrix:{tmp_path / 't.csv'}", 3, seed=0)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.transition, t)          # exact counts: 10 * T
    assert a.rate == pytest.approx((5 + 0 + 4) / 30)


@pytest.mark.parametrize("bad", [np.eye(4), np.full((3, 3), 0.5),
                                 np.array([[1.2, -0.2, 0], [0, 1, 0], [0, 0, 1]])])
def test_bad_matrix_rejected(tmp_path, bad):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(UsageError):
        apply_noise(balanced(3, 4), f"matrix:{tmp_path / 'bad.npy'}", 3, seed=0)


def test_matrix_missing_or_garbage(tmp_path):
    with pytest.raises(UsageError):
        apply_noise(balanced(3, 4), f"matrix:{tmp_path / 'nope.npy'}", 3, seed=0)
    (tmp_path / "g.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(UsageError):
        apply_noise(balanced(3, 4), f"matrix:{tmp_path / 'g.csv'}", 3, seed=0)


def test_labels_out_of_range_rejected():
    with pytest.raises(UsageError):
        apply_noise(np.array([0, 1, 5]), "symmetric:0.2", 3, seed=0)


def test_save_and_load_roundtrip(tmp_path):
    r = apply_noise(balanced(5, 20), "symmetric:0.2", 5, seed=4)
    path = tmp_path / "sub" / "noisy_labels.npz"
    save_noisy_labels(path, r)
    labels, spec, h = load_noisy_labels(path)
    assert np.array_equal(labels, r.labels) and spec == r.spec and h == r.hash
    assert [p.name for p in path.parent.iterdir()] == ["noisy_labels.npz"]  # no temp left
    d = r.to_dict()
    assert d["hash"] == r.hash and d["changed"] == 20 and len(d["per_class_rate"]) == 5
    assert r.hash in r.describe() and "20 of 100" in r.describe()
