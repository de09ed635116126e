"""loom.autograd: gradients of tensors (torch.autograd's names)."""
from loom import _C
from loom.autograd.grad_mode import no_grad, enable_grad, set_grad_enabled, is_grad_enabled, inference_mode
from loom.autograd.function import Function, FunctionCtx

__all__ = ["grad", "backward", "Function", "FunctionCtx", "no_grad", "enable_grad", "set_grad_enabled",
           "is_grad_enabled", "inference_mode"]


def _tensor_list(ts):
    if ts is None:
        return []
    if isinstance(ts, _C.Tensor):
        return [ts]
    return list(ts)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of `outputs` with respect to `inputs`, without touching .grad
    (torch.autograd.grad). Returns a tuple with one entry per input (None for
    an unused input when allow_unused)."""
    outs = _tensor_list(outputs)
    ins = _tensor_list(inputs)
    gos = _tensor_list(grad_outputs)
    if gos and len(gos) != len(outs):
        raise _C.Error(f"autograd.grad: got {len(gos)} grad_outputs for {len(outs)} outputs")
    return tuple(_C._autograd.grad(outs, ins, gos, retain_graph, create_graph, allow_unused))


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulates the gradients of `tensors` into the leaves' .grad (torch.autograd.backward)."""
    ts = _tensor_list(tensors)
    gs = _tensor_list(grad_tensors)
    if retain_graph is None:
        retain_graph = create_graph
    _C._autograd.backward(ts, gs, retain_graph, create_graph)
