"""Grad-mode switches: context managers and decorators, as torch's."""
import functools

from loom import _C


class _GradModeContext:
    """A context manager that is also a decorator (a fresh one per call)."""

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__(*self._args()):
                return fn(*args, **kwargs)

        return wrapper

    def _args(self):
        return ()

    def __exit__(self, *exc):
        _C._autograd.set_grad_enabled(self._prev)
        return False


class no_grad(_GradModeContext):
    """Turns gradient recording off: `with loom.no_grad():` or `@loom.no_grad()`."""

    def __enter__(self):
        self._prev = _C._autograd.is_grad_enabled()
        _C._autograd.set_grad_enabled(False)


class enable_grad(_GradModeContext):
    """Turns gradient recording on inside a no_grad region."""

    def __enter__(self):
        self._prev = _C._autograd.is_grad_enabled()
        _C._autograd.set_grad_enabled(True)


class set_grad_enabled(_GradModeContext):
    """Sets recording on or off: as a call (takes effect at once), a context manager or a decorator."""

    def __init__(self, mode):
        self._mode = bool(mode)
        self._prev = _C._autograd.is_grad_enabled()
        _C._autograd.set_grad_enabled(self._mode)

    def _args(self):
        return (self._mode,)

    def __enter__(self):
        pass


class inference_mode(_GradModeContext):
    """torch.inference_mode: in loom, no_grad (there are no separate inference tensors)."""

    def __init__(self, mode=True):
        self._mode = bool(mode)

    def _args(self):
        return (self._mode,)

    def __enter__(self):
        self._prev = _C._autograd.is_grad_enabled()
        _C._autograd.set_grad_enabled(not self._mode)


def is_grad_enabled():
    return _C._autograd.is_grad_enabled()
