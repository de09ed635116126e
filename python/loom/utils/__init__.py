"""loom.utils: data loading (loom.utils.data), as torch.utils."""
from loom.utils import data  # noqa: F401
