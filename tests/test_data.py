"""Dataset readers on tiny fixtures written in the real on-disk formats, and glyphs."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from calibrate_cli.errors import UsageError
from calibrate_cli.train import config, glyphs
from calibrate_cli.train.data import dataset_names, load_dataset, read_idx, read_image


def test_names_match_config():
    assert dataset_names() == config.DATASETS


# ----------------------------------------------------------------------------- CIFAR

def _write_pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _cifar_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(d, per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = _cifar_rows(rng, per_batch)
        labels = [int(v) for v in np.arange(per_batch) % 10]
        _write_pickle(os.path.join(d, name), {b"batch_label": name.encode(), b"data": data,
                                              b"labels": labels})
        batches.append((data, labels))
    _write_pickle(os.path.join(d, "batches.meta"),
                  {b"label_names": [f"n{i}".encode() for i in range(10)]})
    return batches


def test_cifar10_reader_layout_and_labels(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    b = load_dataset("cifar10", str(tmp_path))   # the parent folder is accepted too
    assert b.classes == 10 and b.channels == 3 and b.image_size == 32
    assert b.train.images.shape == (100, 32, 32, 3) and b.test.images.shape == (20, 32, 32, 3)
    data0, labels0 = batches[0]
    # CIFAR rows are channel planes of 32x32 in row-major order
    i, y, x, c = 3, 5, 17, 2
    assert b.train.images[i, y, x, c] == data0[i, c * 1024 + y * 32 + x]
    assert list(b.train.labels[:20]) == labels0
    assert b.class_names[3] == "n3"
    allpix = np.concatenate([d for d, _ in batches[:5]]).reshape(-1, 3, 1024) / 255.0
    assert np.allclose(b.mean, allpix.mean(axis=(0, 2)))
    assert np.allclose(b.std, allpix.std(axis=(0, 2)))


def test_cifar10_subsets(tmp_path):
    write_cifar10(tmp_path)
    b = load_dataset("cifar10", str(tmp_path), classes=4, train_per_class=3, test_per_class=1,
                     seed=5)
    assert b.classes == 4 and len(b.class_names) == 4
    assert np.array_equal(np.bincount(b.train.labels), [3, 3, 3, 3])
    assert np.array_equal(np.bincount(b.test.labels), [1, 1, 1, 1])
    again = load_dataset("cifar10", str(tmp_path), classes=4, train_per_class=3, seed=5)
    assert np.array_equal(again.train.images, b.train.images)


def test_cifar10_missing_and_malformed(tmp_path):
    with pytest.raises(UsageError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(UsageError, match="--data-dir"):
        load_dataset("cifar10", None)
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(UsageError, match="32"):
        write_cifar10(tmp_path)
        load_dataset("cifar10", str(tmp_path), image_size=64)


def test_cifar100_reader_with_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    fine_to_coarse = rng.permutation(np.repeat(np.arange(20), 5))
    for name, n in (("train", 200), ("test", 100)):
        fine = [int(v) for v in np.arange(n) % 100]
        _write_pickle(tmp_path / name, {b"data": _cifar_rows(rng, n), b"fine_labels": fine,
                                        b"coarse_labels": [int(fine_to_coarse[f]) for f in fine]})
    _write_pickle(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                      b"coarse_label_names": [b"c"] * 20})
    b = load_dataset("cifar100", str(tmp_path), classes=50)
    assert b.classes == 50 and b.train.labels.max() == 49 and b.test.labels.max() == 49
    assert b.coarse_labels.shape == b.train.labels.shape
    assert np.array_equal(b.coarse_labels, fine_to_coarse[b.train.labels])
    assert b.class_names[:2] == ["f0", "f1"]
    os.remove(tmp_path / "meta")
    with pytest.raises(UsageError, match="meta"):
        load_dataset("cifar100", str(tmp_path))


# ----------------------------------------------------------------------------- Fashion-MNIST

def _idx_bytes(arr):
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_idx(tmp_path, compressed):
    rng = np.random.default_rng(2)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(30) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(10)}
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if compressed:
            with gzip.open(tmp_path / (name + ".gz"), "wb") as fh:
                fh.write(raw)
        else:
            (tmp_path / name).write_bytes(raw)
    b = load_dataset("fashion-mnist", str(tmp_path))
    assert b.train.images.shape == (30, 28, 28, 1) and b.channels == 1
    assert np.array_equal(b.train.images[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(b.test.labels, np.arange(10))
    assert b.class_names[9] == "Ankle boot"


def test_idx_malformed(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 9, 1]) + struct.pack(">I", 3) + b"abc")   # not unsigned bytes
    with pytest.raises(UsageError, match="magic"):
        read_idx(str(p))
    p.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")   # truncated body
    with pytest.raises(UsageError, match="promises"):
        read_idx(str(p))
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion-mnist", str(tmp_path))


# ----------------------------------------------------------------------------- image files

def _png(path, value, size=(12, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_imagefolder(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for ci, cname in enumerate(["cat", "ant", "dog"]):
            for j in range(n):
                _png(str(tmp_path / split / cname / f"{j}.png"), 10 * ci + j)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    b = load_dataset("imagefolder", str(tmp_path))
    assert b.class_names == ["ant", "cat", "dog"] and b.classes == 3
    assert b.train.images is None and len(b.train.files) == 9 and len(b.test) == 3
    assert b.image_size == 224 and b.channels == 3
    for f, y in zip(b.train.files, b.train.labels):
        assert b.class_names[y] == os.path.basename(os.path.dirname(f))
    img = read_image(b.train.files[0])
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8
    assert read_image(b.train.files[0], size=20).shape == (20, 24, 3)
    small = load_dataset("imagefolder", str(tmp_path), classes=2, train_per_class=2, image_size=64)
    assert np.array_equal(np.bincount(small.train.labels), [2, 2]) and small.image_size == 64


def test_imagefolder_missing(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UsageError, match="val/<class>"):
        load_dataset("imagefolder", str(tmp_path))


def _webvision_tree(root, classes=60, per_class=2):
    lines_train, lines_val = [], []
    for c in range(classes):
        for j in range(per_class):
            rel = f"google/q{c + 1:04d}/{j}.png"
            _png(str(root / rel), c % 250, size=(4, 4))
            lines_train.append(f"{rel} {c}")
        _png(str(root / "val_images_256" / f"val{c:06d}.png"), c % 250, size=(4, 4))
        lines_val.append(f"val{c:06d}.png {c}")
    (root / "info").mkdir(parents=True, exist_ok=True)
    (root / "info" / "train_filelist_google.txt").write_text("\n".join(lines_train) + "\n")
    (root / "info" / "val_filelist.txt").write_text("\n".join(lines_val) + "\n")


def test_webvision_and_mini(tmp_path):
    _webvision_tree(tmp_path)
    full = load_dataset("webvision", str(tmp_path))
    assert full.classes == 60 and len(full.train) == 120 and len(full.test) == 60
    assert all(os.path.isfile(f) for f in full.train.files + full.test.files)
    assert full.train.files[3].endswith(os.path.join("google", "q0002", "1.png"))
    mini = load_dataset("webvision-mini", str(tmp_path))
    assert mini.classes == 50 and mini.train.labels.max() == 49 and len(mini.test) == 50
    ten = load_dataset("webvision-mini", str(tmp_path), classes=10)
    assert ten.classes == 10 and len(ten.train) == 20
    with pytest.raises(UsageError, match="50"):
        load_dataset("webvision-mini", str(tmp_path), classes=60)


def test_webvision_bad_list_and_missing_images(tmp_path):
    with pytest.raises(UsageError, match="train_filelist_google.txt"):
        load_dataset("webvision", str(tmp_path))
    _webvision_tree(tmp_path, classes=3, per_class=1)
    (tmp_path / "info" / "val_filelist.txt").write_text("val000000.png zero\n")
    with pytest.raises(UsageError, match="line 1"):
        load_dataset("webvision", str(tmp_path))
    (tmp_path / "info" / "val_filelist.txt").write_text("missing.png 0\n")
    with pytest.raises(UsageError, match="missing.png"):
        load_dataset("webvision", str(tmp_path))


def test_ilsvrc12_val_folders_and_list(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    for i, w in enumerate(wnids):
        _png(str(tmp_path / "a" / "val" / w / f"ILSVRC2012_val_{i}.JPEG.png"), i, size=(5, 5))
    b = load_dataset("ilsvrc12-val", str(tmp_path / "a"))
    assert len(b.train) == 0 and len(b.test) == 3 and b.class_names == wnids
    assert list(b.test.labels) == [0, 1, 2]
    for i in range(4):
        _png(str(tmp_path / "b" / "val" / f"img{i}.png"), i, size=(5, 5))
    (tmp_path / "b" / "imagenet_val.txt").write_text("img0.png 3\nimg1.png 0\nimg2.png 1\nimg3.png 2\n")
    lst = load_dataset("ilsvrc12-val", str(tmp_path / "b"), classes=2)
    assert sorted(lst.test.labels) == [0, 1]
    with pytest.raises(UsageError, match="list file"):
        load_dataset("ilsvrc12-val", str(tmp_path / "empty-does-not-exist"))


def test_unknown_dataset():
    with pytest.raises(UsageError, match="known"):
        load_dataset("mnist-but-not")


# ----------------------------------------------------------------------------- glyphs

def test_glyphs_deterministic_and_seeded():
    a = load_dataset("glyphs", classes=12, train_per_class=4, test_per_class=2, seed=3)
    b = load_dataset("glyphs", classes=12, train_per_class=4, test_per_class=2, seed=3)
    c = load_dataset("glyphs", classes=12, train_per_class=4, test_per_class=2, seed=4)
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.train.images, c.train.images)
    assert a.train.images.shape == (48, 24, 24, 1) and a.test.images.shape == (24, 24, 24, 1)
    assert np.array_equal(a.train.labels, np.repeat(np.arange(12), 4))
    assert a.class_names[:3] == [glyphs.class_name(ord(ch)) for ch in "012"]
    assert a.channels == 1 and 0 < a.mean[0] < 1 and 0 < a.std[0] < 1


def test_glyphs_k1000_shape_and_distinct_classes():
    b = load_dataset("glyphs", classes=1000, train_per_class=1, test_per_class=1, image_size=16)
    assert b.train.images.shape == (1000, 16, 16, 1) and b.train.images.dtype == np.uint8
    assert b.classes == 1000 and len(set(b.class_names)) == 1000
    assert glyphs.max_classes() >= 1000
    # prefix property: the first K classes never depend on K
    assert glyphs.class_codepoints(1000)[:50] == glyphs.class_codepoints(50)


def test_glyphs_classes_are_not_lookalikes():
    cps = glyphs.class_codepoints(300)
    sigs = np.stack([glyphs._signature(glyphs.render_base(cp, glyphs.FACES[0])) for cp in cps])
    sim = sigs @ sigs.T
    np.fill_diagonal(sim, 0)
    assert sim.max() < glyphs.SIMILARITY_LIMIT


def test_glyphs_classes_are_separable():
    # a nearest-class-mean classifier on held-out images beats chance (0.1) by far
    k = 10
    b = load_dataset("glyphs", classes=k, train_per_class=60, test_per_class=20, seed=0)

    def z(a):
        a = a.reshape(len(a), -1).astype(np.float64)
        return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)

    centroids = np.stack([z(b.train.images)[b.train.labels == c].mean(0) for c in range(k)])
    accuracy = ((z(b.test.images) @ centroids.T).argmax(1) == b.test.labels).mean()
    assert accuracy > 0.2


def test_glyphs_bad_arguments():
    with pytest.raises(UsageError, match="classes"):
        load_dataset("glyphs", classes=glyphs.max_classes() + 1)
    with pytest.raises(UsageError, match="classes"):
        load_dataset("glyphs", classes=1)
    with pytest.raises(UsageError, match="image-size"):
        load_dataset("glyphs", classes=2, image_size=4)
