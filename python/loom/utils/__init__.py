"""loom.utils: data loading (loom.utils.data) and activation checkpointing (loom.utils.checkpoint), as torch.utils."""
from loom.utils import checkpoint, data  # noqa: F401
