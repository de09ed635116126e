"""loom.autograd.Function: an op whose forward and backward are written in Python.

    class Exp(loom.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * y

    y = Exp.apply(x)

forward runs with recording off; its outputs get one node whose backward
calls the Python backward (the C++ engine takes the GIL for it). Saved
tensors are checked against in-place writes, as loom's own ops' are.
"""
from loom import _C


class FunctionCtx:
    """What forward hands to backward: saved tensors and any attributes set on it."""

    def __init__(self):
        self._to_save = ()
        self._saved = None
        self._non_differentiable = ()
        self.needs_input_grad = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self._to_save = tensors

    @property
    def saved_tensors(self):
        if self._saved is None:
            raise _C.Error("saved_tensors: available only inside backward")
        return self._saved

    def mark_non_differentiable(self, *outputs):
        self._non_differentiable = outputs

    def set_materialize_grads(self, value):
        # Gradients of unused outputs always arrive as zeros in loom.
        self.materialize_grads = bool(value)


class Function:
    """Subclass with static forward(ctx, *args) and backward(ctx, *grads); call apply(*args)."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a loom.autograd.Function subclass must define forward")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a loom.autograd.Function subclass must define backward to be differentiated")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = FunctionCtx()
        positions = [i for i, a in enumerate(args) if isinstance(a, _C.Tensor)]
        inputs = [args[i] for i in positions]
        ctx.needs_input_grad = tuple(isinstance(a, _C.Tensor) and a.requires_grad for a in args)
        prev = _C._autograd.is_grad_enabled()
        _C._autograd.set_grad_enabled(False)
        try:
            out = cls.forward(ctx, *args, **kwargs)
        finally:
            _C._autograd.set_grad_enabled(prev)
        single = isinstance(out, _C.Tensor)
        outs = [out] if single else list(out)
        tensor_out = [i for i, o in enumerate(outs) if isinstance(o, _C.Tensor)]
        to_save = [t for t in ctx._to_save if t is not None]
        non_diff = [k for k, i in enumerate(tensor_out) if any(outs[i] is o for o in ctx._non_differentiable)]
        n_args = len(args)

        def backward(saved, grads):
            ctx._saved = tuple(saved)
            try:
                result = cls.backward(ctx, *grads)
            finally:
                ctx._saved = None
            if not isinstance(result, tuple):
                result = (result,)
            if len(result) != n_args:
                raise _C.Error(f"{cls.__name__}.backward returned {len(result)} gradients; "
                               f"expected {n_args} (one per forward argument, None for non-tensors)")
            return [result[i] for i in positions]

        new = _C._autograd.custom_function(cls.__name__ + "Backward", inputs, [outs[i] for i in tensor_out],
                                           to_save, backward, non_diff)
        for k, i in enumerate(tensor_out):
            outs[i] = new[k]
        return outs[0] if single else tuple(outs)
