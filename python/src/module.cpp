// loom._C: the extension module. Each part binds itself (bind.h lists them);
// the Python package (python/loom) arranges the names as PyTorch's.
#include "bind.h"

PYBIND11_MODULE(_C, m) {
  using namespace loom::python;
  m.doc() = "loom's C++ core (the loom package imports it; use loom, not loom._C)";
  m.attr("__version__") = LOOM_VERSION_STRING;
  bind_core(m);
  bind_tensor(m);
  bind_ops(m);
  bind_interop(m);
  bind_autograd(m);
  bind_nn(m);
  bind_optim(m);
  bind_data(m);
  bind_io(m);
  bind_jit(m);
  bind_distributed(m);
}
