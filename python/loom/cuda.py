"""loom.cuda: whether a GPU can be used (loom's CUDA backend is a later issue)."""
from loom import _C


def is_available():
    return _C._cuda_is_available()


def device_count():
    return 1 if is_available() else 0
