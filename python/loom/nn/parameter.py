"""loom.nn.Parameter: a tensor that a Module registers when it is assigned as an attribute."""
import loom
from loom._C import _nn


class Parameter(loom.Tensor):
    """A leaf tensor that shares `data`'s storage and requires grad (torch.nn.Parameter).

    The parameters that C++ layers register (nn.Linear's weight) come out of
    loom as Parameter objects too.
    """

    def __init__(self, data=None, requires_grad=True):
        super().__init__(loom.empty(0) if data is None else data, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    __str__ = __repr__


_nn._set_parameter_type(Parameter)
