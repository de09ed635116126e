"""loom.nn.parallel: DistributedDataParallel, where PyTorch keeps it (defined in loom.distributed)."""


def __getattr__(name):
    # Resolved on first use: loom.distributed imports loom.nn.
    if name == "DistributedDataParallel":
        from loom.distributed import DistributedDataParallel
        return DistributedDataParallel
    raise AttributeError(f"module 'loom.nn.parallel' has no attribute '{name}'")
