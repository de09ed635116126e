"""loom.utils.data.datasets: loom's C++ datasets (include/loom/data), as torchvision.datasets.

    train = FashionMNIST(train=True, transform=transforms.Normalize((0.2860,), (0.3530,)))

MNIST and FashionMNIST read the four IDX files (raw or .gz) from `root`;
Debian's dataset-fashion-mnist package installs Fashion-MNIST in
/usr/share/datasets/fashion-mnist, FashionMNIST's default root (where
`loom train` reads it). Example i is (image, label): float32 (1, 28, 28) in
[0, 1] (then `transform`), and an int64 scalar.

TextDataset gives next-token windows over a token stream, with the
tokenizers and corpus loading of include/loom/data/text.h.
"""
import os

from loom import _C
from loom.utils.data import CppDataset

__all__ = ["MNIST", "FashionMNIST", "TextDataset", "ByteTokenizer", "CharTokenizer", "Tokenizer",
           "tokenizer_from_json", "load_text_corpus", "load_fortunes", "split_tokens", "read_idx"]

_data = _C._data

Tokenizer = _data.Tokenizer
ByteTokenizer = _data.ByteTokenizer
CharTokenizer = _data.CharTokenizer
tokenizer_from_json = _data.tokenizer_from_json
load_fortunes = _data.load_fortunes
read_idx = _data.read_idx


class MNIST(CppDataset):
    """torchvision.datasets.MNIST: `root` holds {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""

    def __init__(self, root, train=True, transform=None):
        self.root = os.fspath(root)
        self.train = train
        super().__init__(self._load(self.root, train), transform)

    @staticmethod
    def _load(root, train):
        return _data.mnist(root, train)

    @property
    def data(self):
        """uint8 (N, 28, 28), as stored."""
        return self._cpp.images

    @property
    def targets(self):
        """int64 (N)."""
        return self._cpp.targets

    def __repr__(self):
        split = "Train" if self.train else "Test"
        return (f"Dataset {type(self).__name__}\n    Number of datapoints: {len(self)}\n    Root location: "
                f"{self.root}\n    Split: {split}" + (f"\n    Transform: {self.transform!r}" if self.transform else ""))


class FashionMNIST(MNIST):
    """torchvision.datasets.FashionMNIST, by default from Debian's dataset-fashion-mnist."""

    classes = _data.fashion_mnist_classes()

    def __init__(self, root=_data.FASHION_MNIST_ROOT, train=True, transform=None):
        super().__init__(root, train, transform)

    @staticmethod
    def _load(root, train):
        return _data.fashion_mnist(root, train)


class TextDataset(CppDataset):
    """Next-token windows: example i is (ids[s:s+T], ids[s+1:s+T+1]) with s = i * stride (stride defaults to T).

    random_batch(batch_size, seed, step) draws batch `step` of windows at
    random offsets, keyed by (seed, step) alone (Note [Next-token batches]),
    as `loom train --model gpt` does.
    """

    def __init__(self, ids, context_length, stride=None):
        super().__init__(_data.TextDataset(ids, context_length, stride))

    @property
    def ids(self):
        return self._cpp.ids

    @property
    def context_length(self):
        return self._cpp.context_length

    @property
    def stride(self):
        return self._cpp.stride

    def random_batch(self, batch_size, seed, step):
        """(data, target), each int64 (batch_size, T)."""
        return self._cpp.random_batch(batch_size, seed, step)

    def windows(self, starts):
        """The windows at `starts` as one batch (data, target)."""
        return self._cpp.windows(list(starts))


def split_tokens(ids, val_fraction, context_length):
    """(train_ids, val_ids): the first floor(N (1 - val_fraction)) tokens and the rest."""
    return _data.split_tokens(ids, val_fraction, context_length)


def load_text_corpus(path, context_length, kind="char", val_fraction=0.1):
    """A text file, or a folder of fortune files, tokenized ("char" or "byte") and split.

    Returns an object with tokenizer, train_ids, val_ids and num_bytes.
    """
    return _data.load_text_corpus(os.fspath(path), context_length, kind, val_fraction)
