// Carving a kernel call's workspace (Note [Kernel workspaces]).
//
// Note [Kernel workspaces]
// A kernel that needs scratch memory does not allocate it. Its backend lists
// a size function beside the kernel (Backend::workspace) that says how many
// bytes a call needs on the current thread count, and the kernel takes that
// memory from call.workspace. run_kernel fills call.workspace from the
// device's allocator when the caller passed none large enough; a memory
// planner that asked kernel_workspace_bytes for every call of a step can pass
// its own. So every byte a step uses is either a tensor or a workspace the
// planner sees.
//
// The size function and the kernel walk one layout: both call the same
// function with a WorkspaceLayout, the size function in sizing mode (it only
// counts) and the kernel in carving mode (it hands out pointers). Each piece
// starts on a 64-byte boundary. Taking more than the workspace holds is a
// loom bug and fails an assertion, never an overrun.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"
#include "loom/error.h"

namespace loom {

class WorkspaceLayout {
 public:
  // Sizing mode: counts bytes only; every take() returns nullptr.
  WorkspaceLayout() = default;
  // Carving mode: hands out pieces of `ws`.
  explicit WorkspaceLayout(Workspace ws) : base_(static_cast<char*>(ws.data)), capacity_(ws.bytes), carving_(true) {}

  // n elements of T (at least one), 64-byte aligned.
  template <class T>
  T* take(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(T) + 63) & ~size_t{63};
    const size_t at = used_;
    used_ += bytes;
    if (!carving_) return nullptr;
    LOOM_ASSERT(used_ <= capacity_, "kernel workspace overrun: ", used_, " bytes taken of ", capacity_);
    return reinterpret_cast<T*>(base_ + at);
  }
  // Bytes taken so far (64 more for aligning the start).
  size_t bytes() const { return used_ + 64; }
  // False in sizing mode: the caller only wanted the takes counted.
  bool carving() const { return carving_; }

 private:
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  bool carving_ = false;
};

// The workspace of `call`, aligned to 64 bytes, for carving.
inline WorkspaceLayout carve(const KernelCall& call) {
  Workspace ws = call.workspace;
  const auto addr = reinterpret_cast<uintptr_t>(ws.data);
  const size_t skip = ((addr + 63) & ~uintptr_t{63}) - addr;
  if (ws.data == nullptr || ws.bytes < skip) return WorkspaceLayout(Workspace{});
  return WorkspaceLayout(Workspace{static_cast<char*>(ws.data) + skip, ws.bytes - skip});
}

}  // namespace loom
