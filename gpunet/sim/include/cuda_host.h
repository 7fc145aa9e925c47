// defines: the CUDA-on-host dialect of the sim device: qualifiers, vector types, builtin
// indices, __syncthreads and warp intrinsics, atomics, math and bit intrinsics, __half,
// and gpunet_sim::Entry (the extern "C" entry point of one kernel)
//
// gpunet.sim.runtime force-includes this header (g++ -include) in front of unchanged CUDA
// sources (kernels/*.cu), so that the host C++ compiler builds them into a shared library
// whose kernels sim_runtime.cpp executes with CUDA semantics: blocks one at a time, the
// threads of a block as fibers, __syncthreads and the *_sync warp operations as real
// rendezvous between those fibers.
//
// `__shared__` is deliberately not a macro: the runtime preprocesses the translation unit
// with it left as an identifier, then rewrites `extern __shared__ T name[];` to a pointer
// to the launch's dynamic shared memory and every other `__shared__` to `static` (blocks
// run one at a time on one OS thread, so a static variable is per-block shared memory).
//
// Everything a kernel reads that differs between threads (threadIdx, and the results of
// warp operations) lives in the runtime library and is only changed across calls into it,
// so the compiler reloads it after every barrier or shuffle.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <type_traits>
#include <utility>

// Kernel code is device code of a compute capability 8.0 GPU (the sim device's), compiled
// as NVRTC compiles it: `#ifdef __CUDA_ARCH__` branches take the device path.
#define __CUDACC__ 1
#define __CUDA_ARCH__ 800

// ---------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__

// ---------------------------------------------------------------------------------------
// Vector types (CUDA's alignments) and dim3
// ---------------------------------------------------------------------------------------
#define GPUNET_SIM_VEC(name, T, a1, a2, a4)                                                   \
    struct __attribute__((aligned(a1))) name##1 { T x; };                                    \
    struct __attribute__((aligned(a2))) name##2 { T x, y; };                                 \
    struct name##3 { T x, y, z; };                                                           \
    struct __attribute__((aligned(a4))) name##4 { T x, y, z, w; };                           \
    static inline name##1 make_##name##1(T x) { return name##1{x}; }                          \
    static inline name##2 make_##name##2(T x, T y) { return name##2{x, y}; }                  \
    static inline name##3 make_##name##3(T x, T y, T z) { return name##3{x, y, z}; }          \
    static inline name##4 make_##name##4(T x, T y, T z, T w) { return name##4{x, y, z, w}; }

GPUNET_SIM_VEC(char, signed char, 1, 2, 4)
GPUNET_SIM_VEC(uchar, unsigned char, 1, 2, 4)
GPUNET_SIM_VEC(short, short, 2, 4, 8)
GPUNET_SIM_VEC(ushort, unsigned short, 2, 4, 8)
GPUNET_SIM_VEC(int, int, 4, 8, 16)
GPUNET_SIM_VEC(uint, unsigned int, 4, 8, 16)
GPUNET_SIM_VEC(long, long, 8, 16, 16)
GPUNET_SIM_VEC(ulong, unsigned long, 8, 16, 16)
GPUNET_SIM_VEC(longlong, long long, 8, 16, 16)
GPUNET_SIM_VEC(ulonglong, unsigned long long, 8, 16, 16)
GPUNET_SIM_VEC(float, float, 4, 8, 16)
GPUNET_SIM_VEC(double, double, 8, 16, 16)
#undef GPUNET_SIM_VEC

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---------------------------------------------------------------------------------------
// The runtime library's interface (sim_runtime.cpp)
// ---------------------------------------------------------------------------------------
struct gpunet_sim_launch {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_mem;  // dynamic shared memory in bytes
    void** args;                    // one pointer per kernel parameter, as cuLaunchKernel
    const char* name;               // the name expression, for error messages
    char* err;                      // message of a failed launch
    unsigned long long errlen;
};

enum gpunet_sim_warp_kind {
    GPUNET_SIM_SHFL_IDX = 0,
    GPUNET_SIM_SHFL_UP = 1,
    GPUNET_SIM_SHFL_DOWN = 2,
    GPUNET_SIM_SHFL_BFLY = 3,
    GPUNET_SIM_SYNCWARP = 4,
    GPUNET_SIM_BALLOT = 5,
};

extern "C" {
extern uint3 gpunet_sim_threadIdx;
extern uint3 gpunet_sim_blockIdx;
extern dim3 gpunet_sim_blockDim;
extern dim3 gpunet_sim_gridDim;
extern unsigned char gpunet_sim_dynamic_smem[];
int gpunet_sim_run(const gpunet_sim_launch* launch, void (*thunk)(void** args));
int gpunet_sim_barrier(int op, int pred, const char* file, int line);
void gpunet_sim_warp(int kind, unsigned int mask, unsigned long long value, int b, int c,
                     unsigned long long* out, const char* file, int line);
unsigned int gpunet_sim_activemask(const char* file, int line);
[[noreturn]] void gpunet_sim_trap(const char* what, const char* file, int line);
}

// The builtin indices, read-only for kernels.
static const uint3& threadIdx = gpunet_sim_threadIdx;
static const uint3& blockIdx = gpunet_sim_blockIdx;
static const dim3& blockDim = gpunet_sim_blockDim;
static const dim3& gridDim = gpunet_sim_gridDim;
static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------
// Barriers, warp operations, traps
// ---------------------------------------------------------------------------------------
static inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    gpunet_sim_barrier(0, 0, file, line);
}
static inline int __syncthreads_count(int p, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
    return gpunet_sim_barrier(1, p, file, line);
}
static inline int __syncthreads_and(int p, const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
    return gpunet_sim_barrier(2, p, file, line);
}
static inline int __syncthreads_or(int p, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
    return gpunet_sim_barrier(3, p, file, line);
}

namespace gpunet_sim {

template <typename T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "gpunet sim: warp shuffles move values of at most 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T> inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// PTX shfl.sync's c operand for a logical warp of `width` lanes.
inline int shfl_c(int width, bool up, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        gpunet_sim_trap("shuffle width must be a power of 2 in [1, 32]", file, line);
    return ((32 - width) << 8) | (up ? 0 : 0x1f);
}

template <typename T>
inline T shfl(int kind, unsigned int mask, T v, int b, int width, const char* file, int line) {
    unsigned long long out;
    gpunet_sim_warp(kind, mask, to_bits(v), b, shfl_c(width, kind == GPUNET_SIM_SHFL_UP, file, line),
                    &out, file, line);
    return from_bits<T>(out);
}

}  // namespace gpunet_sim

template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int srcLane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gpunet_sim::shfl(GPUNET_SIM_SHFL_IDX, mask, var, srcLane, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gpunet_sim::shfl(GPUNET_SIM_SHFL_UP, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gpunet_sim::shfl(GPUNET_SIM_SHFL_DOWN, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gpunet_sim::shfl(GPUNET_SIM_SHFL_BFLY, mask, var, laneMask, width, file, line);
}

static inline void __syncwarp(unsigned int mask = 0xffffffffu, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    unsigned long long out;
    gpunet_sim_warp(GPUNET_SIM_SYNCWARP, mask, 0, 0, 0, &out, file, line);
}
static inline unsigned int __ballot_sync(unsigned int mask, int pred,
                                         const char* file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
    unsigned long long out;
    gpunet_sim_warp(GPUNET_SIM_BALLOT, mask, pred != 0, 0, 0, &out, file, line);
    return static_cast<unsigned int>(out);
}
static inline int __any_sync(unsigned int mask, int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) != 0u;
}
static inline int __all_sync(unsigned int mask, int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    return (__ballot_sync(mask, pred, file, line) & mask) == mask;
}
static inline unsigned int __activemask(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gpunet_sim_activemask(file, line);
}

[[noreturn]] static inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    gpunet_sim_trap("__trap()", file, line);
}
static inline void __brkpt(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    gpunet_sim_trap("__brkpt()", file, line);
}
#include <assert.h>
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : gpunet_sim_trap("assertion failed: " #e, __FILE__, __LINE__))
#endif

// Memory fences: one OS thread runs every CUDA thread, so only the compiler must not
// reorder across them.
static inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------------
// Loads and stores with cache hints
// ---------------------------------------------------------------------------------------
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------
// Reinterpretation, integer and bit intrinsics
// ---------------------------------------------------------------------------------------
namespace gpunet_sim {
template <typename To, typename From> inline To bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
    To r;
    memcpy(&r, &v, sizeof(To));
    return r;
}
}  // namespace gpunet_sim

static inline float __int_as_float(int v) { return gpunet_sim::bit_cast<float>(v); }
static inline int __float_as_int(float v) { return gpunet_sim::bit_cast<int>(v); }
static inline float __uint_as_float(unsigned int v) { return gpunet_sim::bit_cast<float>(v); }
static inline unsigned int __float_as_uint(float v) { return gpunet_sim::bit_cast<unsigned int>(v); }
static inline double __longlong_as_double(long long v) { return gpunet_sim::bit_cast<double>(v); }
static inline long long __double_as_longlong(double v) { return gpunet_sim::bit_cast<long long>(v); }
static inline int __double2hiint(double v) { return static_cast<int>(__double_as_longlong(v) >> 32); }
static inline int __double2loint(double v) { return static_cast<int>(__double_as_longlong(v)); }
static inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double(static_cast<long long>(
        (static_cast<unsigned long long>(static_cast<unsigned int>(hi)) << 32) |
        static_cast<unsigned int>(lo)));
}

static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
static inline int __mulhi(int a, int b) {
    return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
static inline long long __mul64hi(long long a, long long b) {
    return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
static inline int __mul24(int a, int b) {
    return static_cast<int>(static_cast<unsigned int>((a << 8) >> 8) *
                            static_cast<unsigned int>((b << 8) >> 8));
}
static inline unsigned int __umul24(unsigned int a, unsigned int b) {
    return (a & 0xffffffu) * (b & 0xffffffu);
}
static inline int __popc(unsigned int v) { return __builtin_popcount(v); }
static inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
static inline int __clz(int v) { return v ? __builtin_clz(static_cast<unsigned int>(v)) : 32; }
static inline int __clzll(long long v) {
    return v ? __builtin_clzll(static_cast<unsigned long long>(v)) : 64;
}
static inline int __ffs(int v) { return __builtin_ffs(v); }
static inline int __ffsll(long long v) { return __builtin_ffsll(v); }
static inline unsigned int __brev(unsigned int v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(v);
}
static inline unsigned long long __brevll(unsigned long long v) {
    return (static_cast<unsigned long long>(__brev(static_cast<unsigned int>(v))) << 32) |
           __brev(static_cast<unsigned int>(v >> 32));
}
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int k = 0; k < 4; ++k) r |= static_cast<unsigned int>((v >> (8 * ((s >> (4 * k)) & 7))) & 0xff) << (8 * k);
    return r;
}

// min / max as CUDA declares them for device code.
#define GPUNET_SIM_MINMAX(T)                                  \
    static inline T min(T a, T b) { return a < b ? a : b; }   \
    static inline T max(T a, T b) { return a > b ? a : b; }
GPUNET_SIM_MINMAX(int)
GPUNET_SIM_MINMAX(unsigned int)
GPUNET_SIM_MINMAX(long)
GPUNET_SIM_MINMAX(unsigned long)
GPUNET_SIM_MINMAX(long long)
GPUNET_SIM_MINMAX(unsigned long long)
#undef GPUNET_SIM_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// ---------------------------------------------------------------------------------------
// Float intrinsics (round-to-nearest host arithmetic; the fast approximations are exact)
// ---------------------------------------------------------------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
// __expf, __logf, __powf, __sinf, __cosf, __tanf, __sincosf...: glibc's <math.h> declares them.
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline double __drcp_rn(double a) { return 1.0 / a; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
static inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
static inline int __float2int_rz(float x) { return static_cast<int>(x); }
static inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
static inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
static inline unsigned int __float2uint_rn(float x) { return static_cast<unsigned int>(nearbyintf(x)); }
static inline unsigned int __float2uint_rz(float x) { return static_cast<unsigned int>(x); }
static inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }
static inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
static inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
static inline int __double2int_rz(double x) { return static_cast<int>(x); }
static inline long long __double2ll_rn(double x) { return static_cast<long long>(nearbyint(x)); }
static inline float __double2float_rn(double x) { return static_cast<float>(x); }
static inline float __int2float_rn(int x) { return static_cast<float>(x); }
static inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }
static inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
static inline double __int2double_rn(int x) { return static_cast<double>(x); }
static inline double __ll2double_rn(long long x) { return static_cast<double>(x); }

// ---------------------------------------------------------------------------------------
// __half: IEEE binary16 storage, arithmetic in float rounded back to half (exact for
// + - * / and fma's single rounding aside, as on sm_53+).
// ---------------------------------------------------------------------------------------
namespace gpunet_sim {

// float -> half, round to nearest even; overflow to inf, NaN stays NaN (quiet).
inline unsigned short float_to_half_bits(float f) {
    unsigned int x;
    memcpy(&x, &f, 4);
    const unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  // inf or NaN
        return static_cast<unsigned short>(sign | (ax > 0x7f800000u ? 0x7e00u | ((ax >> 13) & 0x3ffu) : 0x7c00u));
    if (ax >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520
    if (ax < 0x38800000u) {  // below 2**-14: a subnormal half (or zero)
        // Adding 0.5 leaves an ulp of 2**-24, the half subnormal step: the float adder
        // rounds |f| to the nearest multiple (ties to even) and the low bits are the result.
        float a;
        memcpy(&a, &ax, 4);
        a += 0.5f;
        unsigned int b;
        memcpy(&b, &a, 4);
        return static_cast<unsigned short>(sign | (b - 0x3f000000u));
    }
    const unsigned int odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd;  // rebias the exponent (127 -> 15) and round to nearest even
    return static_cast<unsigned short>(sign | (ax >> 13));
}

inline float half_bits_to_float(unsigned short h) {
    const unsigned int sign = static_cast<unsigned int>(h & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    unsigned int bits;
    if (e == 0x1fu) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // m * 2**-24, exact
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

}  // namespace gpunet_sim

struct __half_raw {
    unsigned short x;
};

struct __align__(2) __half {
    unsigned short __x;
    __half() = default;
    __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(gpunet_sim::float_to_half_bits(f)) {}
    __half(double f) : __x(gpunet_sim::float_to_half_bits(static_cast<float>(f))) {}
    __half(int v) : __half(static_cast<float>(v)) {}
    __half(unsigned int v) : __half(static_cast<float>(v)) {}
    __half(long long v) : __half(static_cast<float>(v)) {}
    __half(unsigned long long v) : __half(static_cast<float>(v)) {}
    __half(short v) : __half(static_cast<float>(v)) {}
    __half(unsigned short v) : __half(static_cast<float>(v)) {}
    operator float() const { return gpunet_sim::half_bits_to_float(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
    __half& operator=(float f) { __x = gpunet_sim::float_to_half_bits(f); return *this; }
    __half& operator=(double f) { __x = gpunet_sim::float_to_half_bits(static_cast<float>(f)); return *this; }
};
typedef __half half;

struct __align__(4) __half2 {
    __half x, y;
};
typedef __half2 half2;

static inline float __half2float(__half h) { return static_cast<float>(h); }
static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline __half __double2half(double f) { return __half(static_cast<float>(f)); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
static inline __half __ushort_as_half(unsigned short v) { return __half(__half_raw{v}); }
static inline __half __short_as_half(short v) { return __half(__half_raw{static_cast<unsigned short>(v)}); }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
static inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
static inline float __low2float(__half2 v) { return static_cast<float>(v.x); }
static inline float __high2float(__half2 v) { return static_cast<float>(v.y); }
static inline __half __low2half(__half2 v) { return v.x; }
static inline __half __high2half(__half2 v) { return v.y; }
static inline float2 __half22float2(__half2 v) { return float2{static_cast<float>(v.x), static_cast<float>(v.y)}; }
static inline __half2 __float22half2_rn(float2 v) { return __half2{__half(v.x), __half(v.y)}; }

#define GPUNET_SIM_HALF_BINOP(op, fn)                                                        \
    static inline __half operator op(__half a, __half b) {                                   \
        return __half(static_cast<float>(a) op static_cast<float>(b));                       \
    }                                                                                        \
    static inline __half& operator op##=(__half& a, __half b) { return a = a op b; }         \
    static inline __half fn(__half a, __half b) { return a op b; }                           \
    static inline __half2 operator op(__half2 a, __half2 b) {                                \
        return __half2{a.x op b.x, a.y op b.y};                                              \
    }                                                                                        \
    static inline __half2 fn##2(__half2 a, __half2 b) { return a op b; }
GPUNET_SIM_HALF_BINOP(+, __hadd)
GPUNET_SIM_HALF_BINOP(-, __hsub)
GPUNET_SIM_HALF_BINOP(*, __hmul)
GPUNET_SIM_HALF_BINOP(/, __hdiv)
#undef GPUNET_SIM_HALF_BINOP

#define GPUNET_SIM_HALF_CMP(op, fn)                                                                    \
    static inline bool operator op(__half a, __half b) { return static_cast<float>(a) op static_cast<float>(b); } \
    static inline bool fn(__half a, __half b) { return a op b; }
GPUNET_SIM_HALF_CMP(==, __heq)
GPUNET_SIM_HALF_CMP(!=, __hne)
GPUNET_SIM_HALF_CMP(<, __hlt)
GPUNET_SIM_HALF_CMP(<=, __hle)
GPUNET_SIM_HALF_CMP(>, __hgt)
GPUNET_SIM_HALF_CMP(>=, __hge)
#undef GPUNET_SIM_HALF_CMP

static inline __half operator-(__half a) { return __ushort_as_half(static_cast<unsigned short>(a.__x ^ 0x8000u)); }
static inline __half operator+(__half a) { return a; }
static inline __half __hneg(__half a) { return -a; }
static inline __half __habs(__half a) { return __ushort_as_half(static_cast<unsigned short>(a.__x & 0x7fffu)); }
static inline __half __hfma(__half a, __half b, __half c) {
    return __half(fmaf(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)));
}
static inline __half __hmax(__half a, __half b) { return __half(fmaxf(a, b)); }
static inline __half __hmin(__half a, __half b) { return __half(fminf(a, b)); }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static inline int __hisinf(__half a) {
    return (a.__x & 0x7fffu) == 0x7c00u ? ((a.__x & 0x8000u) ? -1 : 1) : 0;
}
static inline __half2 make_half2(__half x, __half y) { return __half2{x, y}; }
static inline __half2 __half2half2(__half a) { return __half2{a, a}; }
static inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2{a.x, b.x}; }
static inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2{a.y, b.y}; }
static inline __half2 __hneg2(__half2 a) { return __half2{-a.x, -a.y}; }
static inline __half2 __habs2(__half2 a) { return __half2{__habs(a.x), __habs(a.y)}; }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
static inline __half2 __hmax2(__half2 a, __half2 b) { return __half2{__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
static inline __half2 __hmin2(__half2 a, __half2 b) { return __half2{__hmin(a.x, b.x), __hmin(a.y, b.y)}; }
static inline __half hexp(__half a) { return __half(expf(a)); }
static inline __half hlog(__half a) { return __half(logf(a)); }
static inline __half hsqrt(__half a) { return __half(sqrtf(a)); }
static inline __half hrsqrt(__half a) { return __half(1.0f / sqrtf(a)); }
static inline __half htanh(__half a) { return __half(tanhf(a)); }

// ---------------------------------------------------------------------------------------
// Atomics: every CUDA thread runs on one OS thread and switches only inside the runtime,
// so a plain read-modify-write is atomic.
// ---------------------------------------------------------------------------------------
#define GPUNET_SIM_ATOMIC(name, T, expr)                                          \
    static inline T name(T* p, T v) { T old = *p; *p = (expr); return old; }      \
    static inline T name##_block(T* p, T v) { return name(p, v); }                \
    static inline T name##_system(T* p, T v) { return name(p, v); }
#define GPUNET_SIM_ATOMIC_INTS(name, expr)                  \
    GPUNET_SIM_ATOMIC(name, int, expr)                      \
    GPUNET_SIM_ATOMIC(name, unsigned int, expr)             \
    GPUNET_SIM_ATOMIC(name, unsigned long long, expr)
GPUNET_SIM_ATOMIC_INTS(atomicAdd, old + v)
GPUNET_SIM_ATOMIC(atomicAdd, float, old + v)
GPUNET_SIM_ATOMIC(atomicAdd, double, old + v)
GPUNET_SIM_ATOMIC(atomicAdd, __half, old + v)
GPUNET_SIM_ATOMIC(atomicSub, int, old - v)
GPUNET_SIM_ATOMIC(atomicSub, unsigned int, old - v)
GPUNET_SIM_ATOMIC_INTS(atomicExch, v)
GPUNET_SIM_ATOMIC(atomicExch, float, v)
GPUNET_SIM_ATOMIC_INTS(atomicMin, v < old ? v : old)
GPUNET_SIM_ATOMIC(atomicMin, long long, v < old ? v : old)
GPUNET_SIM_ATOMIC_INTS(atomicMax, v > old ? v : old)
GPUNET_SIM_ATOMIC(atomicMax, long long, v > old ? v : old)
GPUNET_SIM_ATOMIC_INTS(atomicAnd, old & v)
GPUNET_SIM_ATOMIC_INTS(atomicOr, old | v)
GPUNET_SIM_ATOMIC_INTS(atomicXor, old ^ v)
GPUNET_SIM_ATOMIC(atomicInc, unsigned int, old >= v ? 0u : old + 1u)
GPUNET_SIM_ATOMIC(atomicDec, unsigned int, (old == 0u || old > v) ? v : old - 1u)
#undef GPUNET_SIM_ATOMIC_INTS
#undef GPUNET_SIM_ATOMIC
#define GPUNET_SIM_CAS(T)                                                                  \
    static inline T atomicCAS(T* p, T compare, T v) { T old = *p; if (old == compare) *p = v; return old; } \
    static inline T atomicCAS_block(T* p, T compare, T v) { return atomicCAS(p, compare, v); }             \
    static inline T atomicCAS_system(T* p, T compare, T v) { return atomicCAS(p, compare, v); }
GPUNET_SIM_CAS(int)
GPUNET_SIM_CAS(unsigned int)
GPUNET_SIM_CAS(unsigned long long)
GPUNET_SIM_CAS(unsigned short)
#undef GPUNET_SIM_CAS

static inline long long clock64() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<long long>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

// ---------------------------------------------------------------------------------------
// Entry points: gpunet.sim.runtime appends, for each name expression E of a module,
//     extern "C" int gpunet_sim_entry_<i>(const gpunet_sim_launch* l)
//         { return gpunet_sim::Entry<&E>::launch(l); }
//     extern "C" const char* gpunet_sim_signature_<i>()
//         { return gpunet_sim::Entry<&E>::signature(); }
// Template argument deduction unpacks the void** argument array into the kernel's
// parameter types, and describes each parameter for the launcher's type check.
// ---------------------------------------------------------------------------------------
namespace gpunet_sim {

// One letter per kind of type: b bool, h __half, f floating, i signed / u unsigned
// integer, p pointer, v void, s anything else (a struct).
template <typename T> constexpr char kind_of() {
    using U = typename std::remove_cv<T>::type;
    if constexpr (std::is_same<U, bool>::value) return 'b';
    else if constexpr (std::is_same<U, __half>::value) return 'h';
    else if constexpr (std::is_floating_point<U>::value) return 'f';
    else if constexpr (std::is_integral<U>::value) return std::is_signed<U>::value ? 'i' : 'u';
    else if constexpr (std::is_enum<U>::value) return std::is_signed<typename std::underlying_type<U>::type>::value ? 'i' : 'u';
    else if constexpr (std::is_pointer<U>::value) return 'p';
    else if constexpr (std::is_void<U>::value) return 'v';
    else return 's';
}

template <typename T> constexpr unsigned size_of() {
    if constexpr (std::is_void<typename std::remove_cv<T>::type>::value) return 0;
    else return sizeof(T);
}

// "[with T = const float*]": the parameter's C++ spelling for messages.
template <typename T> inline const char* spelled() { return __PRETTY_FUNCTION__; }

template <typename T> inline void describe(char* out, size_t n) {
    using P = typename std::remove_pointer<T>::type;
    if constexpr (std::is_pointer<T>::value)
        snprintf(out, n, "p %u %c %u %s\n", static_cast<unsigned>(sizeof(T)), kind_of<P>(), size_of<P>(), spelled<T>());
    else
        snprintf(out, n, "%c %u - 0 %s\n", kind_of<T>(), size_of<T>(), spelled<T>());
}

template <auto F> struct Entry;

template <typename... A, void (*F)(A...)> struct Entry<F> {
    template <size_t... I> static void call(void** args, std::index_sequence<I...>) {
        F(*static_cast<typename std::decay<A>::type*>(args[I])...);
    }
    static void thunk(void** args) { call(args, std::index_sequence_for<A...>{}); }
    static int launch(const gpunet_sim_launch* l) { return gpunet_sim_run(l, &thunk); }
    static const char* signature() {
        static char buf[8192];
        if (!buf[0]) {
            size_t used = 0;
            const size_t cap = sizeof buf;
            ((describe<A>(buf + used, cap - used), used += strlen(buf + used)), ...);
            if (!buf[0]) buf[0] = '\n';  // no parameters
        }
        return buf;
    }
};

}  // namespace gpunet_sim
