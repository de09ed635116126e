"""loom.nn: modules, parameters, functional, init and utils, with torch.nn's names.

Every layer is loom's C++ module (include/loom/nn), and nn.Module is
loom::nn::Module itself: a Python subclass registers parameters, buffers and
submodules by attribute assignment, and C++ containers (Sequential) run its
Python forward.
"""
from loom._C import _nn
from loom.nn.parameter import Parameter  # noqa: F401
from loom.nn import functional, init, parallel, utils  # noqa: F401

Module = _nn.Module
# Containers
Sequential = _nn.Sequential
ModuleList = _nn.ModuleList
ModuleDict = _nn.ModuleDict
# Linear and shape layers
Linear = _nn.Linear
Identity = _nn.Identity
Flatten = _nn.Flatten
Unflatten = _nn.Unflatten
# Convolution, pooling, upsampling
Conv1d = _nn.Conv1d
Conv2d = _nn.Conv2d
ConvTranspose2d = _nn.ConvTranspose2d
MaxPool2d = _nn.MaxPool2d
AvgPool2d = _nn.AvgPool2d
AdaptiveAvgPool2d = _nn.AdaptiveAvgPool2d
Upsample = _nn.Upsample
# Normalization, dropout, embedding
BatchNorm1d = _nn.BatchNorm1d
BatchNorm2d = _nn.BatchNorm2d
SyncBatchNorm = _nn.SyncBatchNorm
LayerNorm = _nn.LayerNorm
RMSNorm = _nn.RMSNorm
Dropout = _nn.Dropout
Dropout2d = _nn.Dropout2d
Embedding = _nn.Embedding
# Activations
ReLU = _nn.ReLU
LeakyReLU = _nn.LeakyReLU
GELU = _nn.GELU
SiLU = _nn.SiLU
Tanh = _nn.Tanh
Sigmoid = _nn.Sigmoid
Softmax = _nn.Softmax
LogSoftmax = _nn.LogSoftmax
# Losses
CrossEntropyLoss = _nn.CrossEntropyLoss
NLLLoss = _nn.NLLLoss
MSELoss = _nn.MSELoss
L1Loss = _nn.L1Loss
SmoothL1Loss = _nn.SmoothL1Loss
BCELoss = _nn.BCELoss
BCEWithLogitsLoss = _nn.BCEWithLogitsLoss
KLDivLoss = _nn.KLDivLoss
# Recurrent layers
RNNBase = _nn.RNNBase
RNN = _nn.RNN
LSTM = _nn.LSTM
GRU = _nn.GRU
RNNCell = _nn.RNNCell
LSTMCell = _nn.LSTMCell
GRUCell = _nn.GRUCell
# Attention and transformers
MultiheadAttention = _nn.MultiheadAttention
TransformerEncoderLayer = _nn.TransformerEncoderLayer
TransformerEncoder = _nn.TransformerEncoder


def quantize_dynamic(model, scheme="int8"):
    """Quantizes every Linear of `model` in place for inference ("int8":
    per-channel weights and per-token activations, as
    torch.ao.quantization.quantize_dynamic; "int4": groups of 32, as ggml's
    Q4_0) and returns the model."""
    _nn.quantize_dynamic(model, scheme)
    return model
