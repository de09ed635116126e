"""loom.nn.utils: gradient clipping (torch.nn.utils.clip_grad_norm_ and clip_grad_value_)."""
from loom._C import _nn

clip_grad_norm_ = _nn.utils.clip_grad_norm_
clip_grad_value_ = _nn.utils.clip_grad_value_

__all__ = ["clip_grad_norm_", "clip_grad_value_"]
