"""loom.nn.functional: torch.nn.functional's names and signatures over loom's
nn::functional and ops (bound in loom._C._nn.functional).

`inplace=True` is accepted where PyTorch takes it; loom returns a new tensor
with the same values, so use the result (x = F.relu(x, inplace=True)).
"""
from loom._C import _nn

_F = _nn.functional

# Layers
linear = _F.linear
dropout = _F.dropout
dropout2d = _F.dropout2d
interpolate = _F.interpolate
layer_norm = _F.layer_norm
rms_norm = _F.rms_norm
batch_norm = _F.batch_norm
embedding = _F.embedding
one_hot = _F.one_hot
pad = _F.pad
scaled_dot_product_attention = _F.scaled_dot_product_attention

# Convolution and pooling
conv1d = _F.conv1d
conv2d = _F.conv2d
conv_transpose2d = _F.conv_transpose2d
max_pool2d = _F.max_pool2d
avg_pool2d = _F.avg_pool2d
adaptive_avg_pool2d = _F.adaptive_avg_pool2d

# Activations
relu = _F.relu
leaky_relu = _F.leaky_relu
elu = _F.elu
gelu = _F.gelu
silu = _F.silu
softplus = _F.softplus
tanh = _F.tanh
sigmoid = _F.sigmoid
softmax = _F.softmax
log_softmax = _F.log_softmax

# Losses
cross_entropy = _F.cross_entropy
nll_loss = _F.nll_loss
mse_loss = _F.mse_loss
l1_loss = _F.l1_loss
smooth_l1_loss = _F.smooth_l1_loss
binary_cross_entropy = _F.binary_cross_entropy
binary_cross_entropy_with_logits = _F.binary_cross_entropy_with_logits
kl_div = _F.kl_div
