"""loom.utils.data: Python and C++ datasets, DataLoader batching, shuffling and collation, transforms."""
import collections
import os

import numpy as np
import pytest

import loom
from loom.utils.data import (ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset, TensorDataset,
                             datasets, default_collate, random_split, transforms)

FASHION = "/usr/share/datasets/fashion-mnist"


class Squares(Dataset):
    """A Python dataset: example i is (a (2,) float tensor, the int i)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return loom.tensor([float(i), float(i * i)]), i


def targets_of(loader):
    return [b[1].tolist() for b in loader]


def test_python_dataset_batches():
    loader = DataLoader(Squares(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    x, y = batches[0]
    assert tuple(x.shape) == (4, 2) and x.dtype == loom.float32
    assert y.dtype == loom.int64 and y.tolist() == [0, 1, 2, 3]
    assert batches[2][1].tolist() == [8, 9]
    dropped = DataLoader(Squares(10), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and targets_of(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffle_is_keyed_by_seed_and_epoch_and_same_in_both_loaders():
    g = loom.Generator().manual_seed(7)
    python = DataLoader(Squares(20), batch_size=5, shuffle=True, generator=g)
    ids = np.arange(20)
    cpp = DataLoader(TensorDataset(loom.zeros(20, 1), loom.tensor(ids)), batch_size=5, shuffle=True,
                     generator=loom.Generator().manual_seed(7))
    assert cpp.dataset._cpp is not None
    e0, e1 = targets_of(python), targets_of(python)
    assert sorted(sum(e0, [])) == list(range(20)) and e0 != e1  # each iteration is the next epoch
    assert targets_of(cpp) == e0 and targets_of(cpp) == e1
    python.set_epoch(0)
    assert targets_of(python) == e0
    order = loom._C._data.shuffle_indices(20, 7, 1)
    assert sum(e1, []) == order


def test_default_seed_comes_from_the_global_generator():
    loom.manual_seed(3)
    a = targets_of(DataLoader(Squares(12), batch_size=12, shuffle=True))
    loom.manual_seed(3)
    b = targets_of(DataLoader(Squares(12), batch_size=12, shuffle=True))
    assert a == b


def test_default_collate_follows_pytorch():
    Point = collections.namedtuple("Point", "x y")
    batch = [{"a": loom.ones(2), "b": (1.5, True), "c": "s", "p": Point(1, np.float32(2.0)),
              "n": np.zeros(3, dtype=np.float32)} for _ in range(3)]
    out = default_collate(batch)
    assert tuple(out["a"].shape) == (3, 2)
    b0, b1 = out["b"]
    assert b0.dtype == loom.float64 and b0.tolist() == [1.5] * 3
    assert b1.dtype == loom.bool and b1.tolist() == [True] * 3
    assert out["c"] == ["s"] * 3
    assert isinstance(out["p"], Point) and out["p"].x.dtype == loom.int64
    assert tuple(out["n"].shape) == (3, 3) and out["n"].dtype == loom.float32
    assert isinstance(default_collate([(1, 2), (3, 4)]), list)
    with pytest.raises(TypeError, match="default_collate"):
        default_collate([object()])


def test_collate_fn_and_samplers():
    loader = DataLoader(Squares(6), batch_size=2, collate_fn=lambda b: [y for _, y in b])
    assert list(loader) == [[0, 1], [2, 3], [4, 5]]

    class Reversed(Sampler):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(range(self.n - 1, -1, -1))

        def __len__(self):
            return self.n

    # A Python sampler drives both the Python loop and the C++ loader.
    assert targets_of(DataLoader(Squares(4), batch_size=2, sampler=Reversed(4))) == [[3, 2], [1, 0]]
    ds = TensorDataset(loom.zeros(4, 1), loom.arange(4))
    assert targets_of(DataLoader(ds, batch_size=2, sampler=Reversed(4))) == [[3, 2], [1, 0]]
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(ds, shuffle=True, sampler=Reversed(4))


def test_workers_give_the_same_batches():
    for ds in (Squares(50), TensorDataset(loom.randn(50, 3), loom.arange(50))):
        runs = [targets_of(DataLoader(ds, batch_size=8, shuffle=True, num_workers=w,
                                      generator=loom.Generator().manual_seed(1))) for w in (0, 2)]
        assert runs[0] == runs[1]


def test_errors_reach_the_loop():
    class Broken(Squares):
        def __getitem__(self, i):
            if i == 5:
                raise KeyError("bad example")
            return super().__getitem__(i)

    for workers in (0, 2):
        seen = []
        with pytest.raises(KeyError, match="bad example"):
            for _, y in DataLoader(Broken(10), batch_size=2, num_workers=workers):
                seen.append(y.tolist())
        assert seen == [[0, 1], [2, 3]]

    def fails(x):
        raise ValueError("transform failed")

    ds = datasets.TextDataset(loom.arange(40), 4)
    ds.transform = fails
    with pytest.raises(ValueError, match="transform failed"):
        list(DataLoader(ds, batch_size=2, num_workers=2))


def test_tensor_dataset_subset_concat_and_split():
    x, y = loom.randn(10, 3), loom.arange(10)
    ds = TensorDataset(x, y)
    assert len(ds) == 10 and ds[3][1].item() == 3 and ds[-1][1].item() == 9
    np.testing.assert_array_equal(ds[2][0].numpy(), x[2].numpy())
    three = TensorDataset(x, y, y)
    assert three._cpp is None and len(three[0]) == 3 and len(next(iter(DataLoader(three, batch_size=4)))) == 3
    (xs,) = next(iter(DataLoader(TensorDataset(x), batch_size=4)))
    assert tuple(xs.shape) == (4, 3)

    sub = Subset(ds, [9, 0, 5])
    assert sub._cpp is not None and targets_of(DataLoader(sub, batch_size=3)) == [[9, 0, 5]]
    cat = ds + Squares(3)
    assert cat._cpp is None and len(cat) == 13 and cat[11][1] == 1
    both = ConcatDataset([ds, sub])
    assert both._cpp is not None and targets_of(DataLoader(both, batch_size=13)) == [list(range(10)) + [9, 0, 5]]

    g = loom.Generator().manual_seed(4)
    a, b = random_split(Squares(10), [7, 3], generator=g)
    assert len(a) == 7 and len(b) == 3 and sorted(a.indices + b.indices) == list(range(10))
    c, d = random_split(ds, [0.7, 0.3], generator=loom.Generator().manual_seed(4))
    assert c.indices == a.indices and d.indices == b.indices
    with pytest.raises(IndexError):
        sub[3]


def test_distributed_sampler_splits_an_epoch():
    ds = Squares(11)
    ranks = [DistributedSampler(ds, num_replicas=2, rank=r, seed=3) for r in range(2)]
    first = [list(s) for s in ranks]
    assert all(len(i) == 6 for i in first) and set(first[0]) | set(first[1]) == set(range(11))
    ranks[0].set_epoch(0)
    assert list(ranks[0]) == first[0]
    assert list(ranks[0]) != first[0]  # iterating moved it to epoch 1
    # The sampler's epoch drives both loaders alike.
    s_py, s_cpp = (DistributedSampler(ds, num_replicas=2, rank=1, seed=3) for _ in range(2))
    cpp_ds = TensorDataset(loom.zeros(11, 1), loom.arange(11))
    for _ in range(2):
        assert targets_of(DataLoader(ds, batch_size=3, sampler=s_py)) == targets_of(
            DataLoader(cpp_ds, batch_size=3, sampler=s_cpp))


def test_transforms():
    x = loom.ones(1, 4, 4) * 0.5
    norm = transforms.Normalize((0.25,), (0.5,))
    np.testing.assert_allclose(norm(x).numpy(), np.full((1, 4, 4), 0.5), rtol=1e-6)
    crop = transforms.RandomCrop(4, padding=2)
    assert tuple(crop(x).shape) == (1, 4, 4)
    both = transforms.Compose([transforms.RandomHorizontalFlip(p=1.0), lambda t: t * 2, norm])
    np.testing.assert_allclose(both(x).numpy(), np.full((1, 4, 4), 1.5), rtol=1e-6)
    assert "Normalize(mean=(0.25,), std=(0.5,))" in repr(both)
    with pytest.raises(loom.Error, match="RandomCrop"):
        transforms.RandomCrop((1, 2, 3))


def test_text_data():
    tok = datasets.CharTokenizer.from_corpus("hello world")
    ids = tok.encode("hello")
    assert tok.decode(ids) == "hello" and tok.decode(loom.tensor(ids)) == "hello"
    assert tok.vocab_size == len(set("hello world")) and tok.chars == "".join(sorted(set("hello world")))
    assert datasets.tokenizer_from_json(tok.to_json()).encode("world") == tok.encode("world")
    assert datasets.CharTokenizer("abc").encode_tensor("cab").tolist() == [2, 0, 1]
    byte = datasets.ByteTokenizer()
    assert byte.encode("é") == [195, 169] and byte.vocab_size == 256
    with pytest.raises(loom.Error):
        tok.encode("z")

    stream = loom.arange(20)
    ds = datasets.TextDataset(stream, 4)
    assert len(ds) == 4 and ds.context_length == 4 and ds.stride == 4 and ds.ids is not None
    assert len(datasets.TextDataset(stream, 4, stride=1)) == 16
    data, target = ds[1]
    assert data.tolist() == [4, 5, 6, 7] and target.tolist() == [5, 6, 7, 8]
    with pytest.raises(IndexError):
        ds[4]
    x, y = ds.random_batch(3, seed=1, step=0)
    assert tuple(x.shape) == (3, 4) and (y.numpy()[:, :-1] == x.numpy()[:, 1:]).all()
    x2, _ = ds.random_batch(3, seed=1, step=0)
    np.testing.assert_array_equal(x.numpy(), x2.numpy())
    train, val = datasets.split_tokens(stream, 0.25, 4)
    assert len(train) == 15 and len(val) == 5
    xb, yb = next(iter(DataLoader(ds, batch_size=2)))
    assert tuple(xb.shape) == (2, 4) and xb.dtype == loom.int64


@pytest.mark.skipif(not os.path.isdir("/usr/share/games/fortunes"), reason="the fortunes package is not installed")
def test_text_corpus():
    corpus = datasets.load_text_corpus("/usr/share/games/fortunes", 64)
    assert corpus.tokenizer.name == "char" and len(corpus.train_ids) > len(corpus.val_ids) > 64
    text = datasets.load_fortunes()
    assert corpus.num_bytes == len(text.encode()) and text.endswith("\n")


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_loads_as_loom_train_does():
    train = datasets.FashionMNIST(train=True, transform=transforms.Normalize((0.2860,), (0.3530,)))
    test = datasets.FashionMNIST(FASHION, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert tuple(train.data.shape) == (60000, 28, 28) and train.data.dtype == loom.uint8
    assert train.classes[9] == "Ankle boot"
    image, label = test[0]
    assert tuple(image.shape) == (1, 28, 28) and image.dtype == loom.float32 and label.dtype == loom.int64
    np.testing.assert_allclose(image.numpy()[0], test.data[0].numpy() / 255.0, rtol=1e-6)
    labels = datasets.read_idx(FASHION + "/t10k-labels-idx1-ubyte.gz")
    assert labels.dtype == loom.uint8 and labels.tolist() == test.targets.tolist()
    assert len(datasets.MNIST(FASHION, train=False)) == 10000  # the same file layout

    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, generator=loom.Generator().manual_seed(1))
    assert len(loader) == 469
    x, y = next(iter(loader))
    assert tuple(x.shape) == (128, 1, 28, 28) and tuple(y.shape) == (128,)
    first = loom._C._data.shuffle_indices(60000, 1, 0)[:128]
    expected = (train.data.numpy()[first] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(x.numpy()[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), train.targets.numpy()[first])
    with pytest.raises(loom.Error, match="nowhere"):
        datasets.FashionMNIST("/nowhere")
