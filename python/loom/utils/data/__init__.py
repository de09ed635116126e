"""loom.utils.data: torch.utils.data over loom's C++ data loading (include/loom/data).

    from loom.utils.data import DataLoader, datasets, transforms
    train = datasets.FashionMNIST(train=True, transform=transforms.Normalize((0.2860,), (0.3530,)))
    loader = DataLoader(train, batch_size=128, shuffle=True, generator=loom.Generator().manual_seed(1))
    for x, y in loader:   # x: (128, 1, 28, 28) float32, y: (128,) int64
        ...

One DataLoader, two ways of loading:
- A dataset that loom's C++ core holds (datasets.MNIST, FashionMNIST and
  TextDataset, a TensorDataset of one or two tensors, and Subset,
  ConcatDataset and random_split over such datasets) is loaded by the C++
  DataLoader, unless a collate_fn is given: examples are read, transformed
  and collated in C++ without the GIL, ahead on num_workers threads.
- Any other dataset (a Python class with __getitem__ and __len__), or a
  collate_fn, goes through a Python loop with default_collate (PyTorch's);
  num_workers > 0 builds batches ahead on that many threads.

Order (Note [Deterministic data loading] in include/loom/data/dataloader.h):
each iteration runs the loader's next epoch (0, 1, ...; set_epoch(e) picks
the next one). With shuffle, epoch e visits the permutation keyed by
(seed, e), the same in both ways of loading and for any num_workers. The
seed is generator.initial_seed() when a generator is given, so
loom.Generator().manual_seed(s) gives `loom train --seed s`'s order; without
one it is drawn from loom's global generator when the loader is made.
"""
import collections.abc
import concurrent.futures
import itertools

from loom import _C

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split", "Sampler", "DistributedSampler",
           "DataLoader", "default_collate", "datasets", "transforms"]

_data = _C._data


class Dataset:
    """torch.utils.data.Dataset: subclasses define __getitem__ and __len__.

    `_cpp` is the C++ dataset behind it (None for Python datasets) and
    `transform` what the C++ loader applies to each example's data.
    """

    _cpp = None
    transform = None

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __add__(self, other):
        return ConcatDataset([self, other])


def _check_index(index, n):
    if not isinstance(index, int):
        index = index.__index__()
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} is out of range for a dataset of size {n}")
    return index


class CppDataset(Dataset):
    """A dataset held by loom's C++ core: example i is (data, target), or (data,) without targets."""

    def __init__(self, cpp, transform=None):
        self._cpp = cpp
        self.transform = transform

    def __len__(self):
        return len(self._cpp)

    def __getitem__(self, index):
        data, target = self._cpp.get(_check_index(index, len(self._cpp)))
        if self.transform is not None:
            data = self.transform(data)
        return (data,) if target is None else (data, target)


class TensorDataset(Dataset):
    """Example i is tuple(t[i] for t in tensors); every tensor has the same size along dim 0."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        n = tensors[0].size(0)
        if any(t.size(0) != n for t in tensors):
            raise ValueError("Size mismatch between tensors")
        self.tensors = tensors
        # The C++ dataset holds (data, targets): one or two tensors.
        if len(tensors) <= 2:
            self._cpp = _data.TensorDataset(*tensors)

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return self.tensors[0].size(0)


class Subset(Dataset):
    """The examples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform = getattr(dataset, "transform", None)
        if getattr(dataset, "_cpp", None) is not None:
            self._cpp = _data.Subset(dataset._cpp, self.indices)

    def __getitem__(self, index):
        if isinstance(index, list):
            return [self.dataset[self.indices[i]] for i in index]
        return self.dataset[self.indices[index]]

    def __len__(self):
        return len(self.indices)


class ConcatDataset(Dataset):
    """The datasets one after the other."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("datasets should not be an empty iterable")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))
        # One C++ dataset only when the loader can apply one transform to all.
        transforms_ = {id(getattr(d, "transform", None)) for d in self.datasets}
        if all(getattr(d, "_cpp", None) is not None for d in self.datasets) and len(transforms_) == 1:
            self._cpp = _data.ConcatDataset([d._cpp for d in self.datasets])
            self.transform = self.datasets[0].transform

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        index = _check_index(index, len(self))
        for d, (start, end) in enumerate(zip([0] + self.cumulative_sizes, self.cumulative_sizes)):
            if index < end:
                return self.datasets[d][index - start]


def _seed_of(generator):
    return generator.initial_seed() if generator is not None else _data.draw_seed()


def random_split(dataset, lengths, generator=None):
    """Subsets of the given lengths (or fractions summing to 1) over a permutation keyed by the generator's seed."""
    lengths = list(lengths)
    return [Subset(dataset, idx) for idx in _data.split_indices(len(dataset), lengths, _seed_of(generator))]


class Sampler:
    """torch.utils.data.Sampler: an iterable of dataset indices with a length."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class DistributedSampler(Sampler):
    """torch.utils.data.DistributedSampler: this rank's share of each epoch.

    num_replicas and rank default to loom.distributed's. Each iteration gives
    epoch self.epoch's indices and then moves to the next epoch, so calling
    set_epoch(e) before every epoch, as in PyTorch, and not calling it give
    the same orders.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        self._cpp = _data.DistributedSampler(len(dataset), num_replicas, rank, shuffle, seed, drop_last)
        self.num_replicas = self._cpp.num_replicas
        self.rank = self._cpp.rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.total_size = self._cpp.total_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        indices = self._cpp.indices(self.epoch)
        self.epoch += 1
        return iter(indices)

    def __len__(self):
        return len(self._cpp)


def default_collate(batch):
    """PyTorch's default_collate: stacks tensors, numbers and NumPy arrays; recurses into dicts and sequences."""
    elem = batch[0]
    if isinstance(elem, _C.Tensor):
        return _C.stack(batch, 0)
    if type(elem).__module__ == "numpy" and type(elem).__name__ not in ("str_", "string_"):
        return _C.stack([_C.as_tensor(b) for b in batch], 0)
    if isinstance(elem, float):
        return _C.tensor(batch, dtype=_C.float64)
    if isinstance(elem, int):  # bool too: a bool tensor
        return _C.tensor(batch)
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return {key: default_collate([d[key] for d in batch]) for key in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # a namedtuple
        return type(elem)(*(default_collate(samples) for samples in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        if any(len(e) != len(elem) for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(samples) for samples in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                    f"found {type(elem).__name__}")


def _loader_transform(t):
    if t is None or isinstance(t, _data.Transform):
        return t
    return _data.from_callable(t)


class DataLoader:
    """torch.utils.data.DataLoader (see the module's docstring for how it loads)."""

    def __init__(self, dataset, batch_size=1, shuffle=False, sampler=None, num_workers=0, collate_fn=None,
                 drop_last=False, generator=None, *, prefetch_factor=2):
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable workers")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.sampler = sampler
        self.num_workers = num_workers
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.drop_last = drop_last
        self.generator = generator
        self.prefetch_factor = prefetch_factor
        self.seed = _seed_of(generator)
        self._epoch = 0
        self._cpp = None
        if getattr(dataset, "_cpp", None) is not None and collate_fn is None:
            cpp_sampler = sampler._cpp if isinstance(sampler, DistributedSampler) else sampler
            self._cpp = _data.DataLoader(dataset._cpp, batch_size, shuffle, cpp_sampler, drop_last, num_workers,
                                         self.seed, prefetch_factor, _loader_transform(dataset.transform))

    def set_epoch(self, epoch):
        """The epoch the next iteration runs (its shuffle order and random transforms)."""
        self._epoch = epoch

    def __len__(self):
        if self._cpp is not None:
            return len(self._cpp)
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        epoch = self._epoch
        self._epoch += 1
        if isinstance(self.sampler, DistributedSampler):
            epoch = self.sampler.epoch
        if self._cpp is None:
            return self._python_batches(epoch)
        self._cpp.set_epoch(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.epoch += 1  # as its own iteration does
        return self._cpp_batches()

    def _cpp_batches(self):
        for data, target in self._cpp:
            yield [data] if target is None else [data, target]

    def _index_batches(self, epoch):
        if self.sampler is not None:
            order = iter(self.sampler)
        elif self.shuffle:
            order = iter(_data.shuffle_indices(len(self.dataset), self.seed, epoch))
        else:
            order = iter(range(len(self.dataset)))
        while True:
            batch = list(itertools.islice(order, self.batch_size))
            if not batch or (self.drop_last and len(batch) < self.batch_size):
                return
            yield batch

    def _fetch(self, indices):
        return self.collate_fn([self.dataset[i] for i in indices])

    def _python_batches(self, epoch):
        batches = self._index_batches(epoch)
        if self.num_workers == 0:
            for indices in batches:
                yield self._fetch(indices)
            return
        # Up to prefetch_factor batches per worker in flight, received in order;
        # a batch's error is raised when the loop reaches it.
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
            pending = collections.deque()
            try:
                for indices in itertools.islice(batches, self.prefetch_factor * self.num_workers):
                    pending.append(pool.submit(self._fetch, indices))
                while pending:
                    batch = pending.popleft().result()
                    for indices in itertools.islice(batches, 1):
                        pending.append(pool.submit(self._fetch, indices))
                    yield batch
            finally:
                for f in pending:
                    f.cancel()


# The C++ datasets and transforms (torchvision's places), which build on the classes above.
from loom.utils.data import datasets, transforms  # noqa: E402,F401
