"""loom.nn.init: torch.nn.init's initializers over loom's nn::init.

Each fills the tensor in place without recording autograd history, draws
from `generator` (or the global one, so loom.manual_seed fixes the values)
and returns the same tensor.
"""
from loom._C import _nn

_I = _nn.init

calculate_gain = _I.calculate_gain
_calculate_fan_in_and_fan_out = _I._calculate_fan_in_and_fan_out
uniform_ = _I.uniform_
normal_ = _I.normal_
constant_ = _I.constant_
zeros_ = _I.zeros_
ones_ = _I.ones_
eye_ = _I.eye_
xavier_uniform_ = _I.xavier_uniform_
xavier_normal_ = _I.xavier_normal_
kaiming_uniform_ = _I.kaiming_uniform_
kaiming_normal_ = _I.kaiming_normal_
orthogonal_ = _I.orthogonal_
