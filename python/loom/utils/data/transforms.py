"""loom.utils.data.transforms: torchvision.transforms' image transforms, run by loom's C++ ones.

Given to a dataset (datasets.FashionMNIST(transform=...)), a transform runs
inside the C++ DataLoader on its worker threads, and its random draws are
keyed by (loader seed, epoch, example) (Note [Data randomness is keyed, not
sequential]), so any num_workers gives the same batches. Called directly,
transform(x) draws from a stream seeded by loom's global generator. Images
are (..., C, H, W) or (H, W). A Python callable (tensor -> tensor) works as
a transform too, and inside Compose.
"""
from loom import _C

__all__ = ["Normalize", "RandomCrop", "RandomHorizontalFlip", "Compose"]

_data = _C._data


class Normalize(_data.Transform):
    """(x - mean[c]) / std[c] per channel c; one mean and std normalize the whole tensor."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        super().__init__(_data.normalize(list(self.mean), list(self.std)))

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomCrop(_data.Transform):
    """Pads H and W by `padding` zeros, then cuts a random window of `size` (an int or (h, w))."""

    def __init__(self, size, padding=0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = padding
        super().__init__(_data.random_crop(list(self.size), padding))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(_data.Transform):
    """Mirrors along W with probability p."""

    def __init__(self, p=0.5):
        self.p = p
        super().__init__(_data.random_horizontal_flip(p))

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose(_data.Transform):
    """The transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        parts = [t if isinstance(t, _data.Transform) else _data.from_callable(t) for t in self.transforms]
        super().__init__(_data.compose(parts))

    def __repr__(self):
        return "Compose(\n" + "".join(f"    {t!r}\n" for t in self.transforms) + ")"
