"""loom: a deep learning system in C++20, from Python.

The names follow PyTorch: loom.tensor, loom.randn, loom.nn.Linear,
loom.optim.AdamW, loom.utils.data.DataLoader, loom.no_grad, loom.save.
Everything runs in loom's C++ core (the extension module loom._C); this
package arranges the names and adds the parts that take Python objects.
"""
from loom import _C
from loom._tensor import Size

_C._set_size_type(Size)

# Every public name of the core: Tensor, dtype, device, Generator, Error, the
# dtypes, the factories and every op of include/loom/ops.h.
for _name in dir(_C):
    if not _name.startswith("_"):
        globals()[_name] = getattr(_C, _name)
del _name
# The core's classes print as the package's (loom.Error, not loom._C.Error).
for _cls in (_C.Tensor, _C.dtype, _C.device, _C.Generator, _C.Error):
    _cls.__module__ = "loom"
del _cls

from loom import autograd  # noqa: E402
from loom.autograd.grad_mode import no_grad, enable_grad, set_grad_enabled, is_grad_enabled, inference_mode  # noqa: E402
from loom import nn, optim, utils, distributed, amp  # noqa: E402
from loom.amp import autocast  # noqa: E402
from loom.serialization import save, load  # noqa: E402
from loom.jit import compile  # noqa: E402
from loom import cuda  # noqa: E402

__version__ = _C.__version__

# PyTorch's dtype aliases (last: they shadow builtins inside this module).
float = float32  # noqa: A001
double = float64
half = float16
int = int32  # noqa: A001
long = int64
# bool is loom.bool already (the dtype named "bool" in _C).
