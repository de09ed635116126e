// CPU feature detection: the ISA (CPUID and LOOM_CPU_ISA) and the cache
// sizes (Note [CPU ISA selection] in cpu_features.h).
#include "backend/cpu/cpu_features.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <string>

#include <unistd.h>

#include "loom/error.h"

namespace loom::cpu {

// ---------------------------------------------------------------- ISA choice

const char* gemm_isa_name(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::Portable: return "portable";
    case GemmIsa::Avx2: return "avx2";
    case GemmIsa::Avx512: return "avx512";
  }
  return "unknown";
}

GemmIsa gemm_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wide registers
  // (XGETBV), so a feature it reports is usable.
  static const GemmIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return GemmIsa::Avx512;
    // F16C: the AVX2 level's float16 conversions (cpu_vec_avx2.cpp).
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return GemmIsa::Avx2;
    return GemmIsa::Portable;
  }();
  return best;
#else
  return GemmIsa::Portable;
#endif
}

namespace {

// -1: LOOM_CPU_ISA not read yet.
std::atomic<int> g_isa{-1};

GemmIsa isa_from_env() {
  const GemmIsa best = gemm_best_isa();
  const char* env = std::getenv("LOOM_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  std::string want(env);
  std::transform(want.begin(), want.end(), want.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (GemmIsa isa : {GemmIsa::Portable, GemmIsa::Avx2, GemmIsa::Avx512})
    if (want == gemm_isa_name(isa)) return std::min(isa, best);  // never above what the CPU has
  LOOM_ERROR("LOOM_CPU_ISA: unknown value '", env, "' (expected avx512, avx2 or portable)");
}

}  // namespace

GemmIsa gemm_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = static_cast<int>(isa_from_env());
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<GemmIsa>(isa);
}

void cpu_reload_isa() {
  g_isa.store(-1, std::memory_order_relaxed);
  gemm_isa();
}

// ---------------------------------------------------------------- caches

namespace {

// One cache level's size in bytes from /sys/devices/system/cpu/cpu0/cache
// (Linux fills it from CPUID leaf 4), or 0 when unknown.
int64_t sysfs_cache_size(int level, bool data) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(level_file >> l) || !(type_file >> type) || !(size_file >> size)) break;
    if (l != level || (data ? type == "Instruction" : type != "Unified")) continue;
    int64_t bytes = 0;
    size_t pos = 0;
    while (pos < size.size() && std::isdigit(static_cast<unsigned char>(size[pos])))
      bytes = bytes * 10 + (size[pos++] - '0');
    if (pos < size.size() && (size[pos] == 'K' || size[pos] == 'k')) bytes <<= 10;
    if (pos < size.size() && size[pos] == 'M') bytes <<= 20;
    return bytes;
  }
  return 0;
}

}  // namespace

int64_t cpu_l2_bytes() {
  static const int64_t l2 = [] {
    int64_t v = sysfs_cache_size(2, false);
    if (v <= 0) v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? v : int64_t{1} << 20;
  }();
  return l2;
}

}  // namespace loom::cpu
