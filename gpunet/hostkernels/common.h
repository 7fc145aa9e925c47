// What gpunet's compiled CPU kernels (pooling.cpp, optim.cpp, elementwise.cpp) share.
#ifndef GPUNET_HOSTKERNELS_COMMON_H
#define GPUNET_HOSTKERNELS_COMMON_H

#include <cstdint>
#include <cstring>

// x86-64 with GCC: AVX-512, AVX2 and baseline clones of each entry point, chosen at load
// time for the CPU at hand (one cached library serves every x86-64 host)
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define GPUNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
// float32 kernels written with AVX-512 vectors in a #pragma GCC target region (pooling.cpp's
// gpunet_avx512), called where has_avx512f()
#define GPUNET_AVX512_REGION 1
#else
#define GPUNET_AVX512_REGION 0
#define GPUNET_CLONES
#endif

// Every kernel body is inlined into its entry point: target_clones makes AVX-512/AVX2 copies
// of the entry points alone, so a body left as a call of its own runs the baseline (SSE2)
// code under every clone (max pooling's backward did: 0.16 -> 0.09 ms on 3.2 MB)
#if defined(__GNUC__)
#define GPUNET_INLINE inline __attribute__((always_inline))
#else
#define GPUNET_INLINE inline
#endif

// threads.cpp: job(ctx, lo, hi) over items [0, n) in chunks, on the caller and the thread
// team's helpers (as many threads as gpunet_threads::pass_threads gives), each item once
namespace gpunet_threads {
typedef void (*Job)(void* ctx, long lo, long hi);
void split(Job job, void* ctx, long n);
}  // namespace gpunet_threads

namespace gpunet_host {


#if GPUNET_AVX512_REGION
// whether this CPU runs AVX-512F (pooling.cpp's gpunet_avx512 region needs it)
inline bool has_avx512f() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}
#endif

template <typename T> struct Bits;
template <> struct Bits<float> { typedef uint32_t U; };
template <> struct Bits<double> { typedef uint64_t U; };

// 1.0 when on, +0.0 when not: the multiplier of NumPy's ``dy * (arg == k)`` or
// ``dy * (y > 0)`` (a bool promoted to 1.0/0.0), chosen by a bit mask, without a branch
// (a branch on random data vectorizes badly and mispredicts)
template <typename T>
GPUNET_INLINE T one_or_zero(bool on) {
    typedef typename Bits<T>::U U;
    const T one = 1;
    U u;
    std::memcpy(&u, &one, sizeof u);
    u &= (U)0 - (U)on;
    T r;
    std::memcpy(&r, &u, sizeof r);
    return r;
}

// NumPy's maximum(v, 0): v where v > 0 or v is NaN (NaN propagates), else +0.0 (for -0.0 too)
template <typename T>
GPUNET_INLINE T relu_of(T v) { return (v > 0 || v != v) ? v : T(0); }

}  // namespace gpunet_host

#endif
