// gpunet's compiled CPU kernels: the SGD and Adam updates on the NumPy path, one pass over
// each parameter instead of NumPy's four to fourteen.
//
// The same operations in the same order as the NumPy passes in gpunet/optim.py (SGD._update,
// Adam._update, Optimizer._regularize), each rounded to T as NumPy rounds each pass: the
// hyper-parameters arrive already rounded to T (NumPy 2 casts a Python float to the array's
// dtype), sqrt and division are IEEE-correct in both, and -ffp-contract=off forbids fusing
// a multiply and an add. So the results are the same bits.
#include <cmath>
#include <cstdint>

#include "common.h"

namespace {

// numpy.sign: 1, -1, 0 for +-0, NaN for NaN
template <typename T>
GPUNET_INLINE T sign(T w) {
    return w > 0 ? T(1) : (w < 0 ? T(-1) : (w == 0 ? T(0) : w));
}

// Optimizer._regularize: s = w*wd + g (or g), then s + sign(w)*l1
template <typename T>
GPUNET_INLINE T regularized(T w, T g, T wd, T l1, bool use_wd, bool use_l1) {
    T s = use_wd ? w * wd + g : g;
    if (use_l1) {
        T t = sign(w) * l1;
        s = s + t;
    }
    return s;
}

enum { WD = 1, L1 = 2, MOMENTUM = 4, NESTEROV = 8, DECOUPLED = 16 };

template <typename T>
GPUNET_INLINE void sgd(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ buf, long n,
                T lr, T m, T wd, T l1, int flags) {
    const bool use_wd = flags & WD, use_l1 = flags & L1;
    if (!(flags & MOMENTUM)) {
        for (long i = 0; i < n; ++i) {
            T s = regularized(w[i], g[i], wd, l1, use_wd, use_l1);
            w[i] = w[i] - s * lr;
        }
    } else if (!(flags & NESTEROV)) {
        for (long i = 0; i < n; ++i) {
            T s = regularized(w[i], g[i], wd, l1, use_wd, use_l1);
            T b = buf[i] * m;
            b = b + s;
            buf[i] = b;
            w[i] = w[i] - b * lr;
        }
    } else {
        for (long i = 0; i < n; ++i) {
            T s = regularized(w[i], g[i], wd, l1, use_wd, use_l1);
            T b = buf[i] * m;
            b = b + s;
            buf[i] = b;
            T t = b * m;
            t = t + s;
            t = t * lr;
            w[i] = w[i] - t;
        }
    }
}

// Adam._update: m = m*b1 + g*(1-b1); v = v*b2 + (g*g)*(1-b2);
// w -= (m / (sqrt(v)/c2 + eps)) * step_size. DECOUPLED (AdamW): w *= wd first (wd is then
// the factor 1 - lr*weight_decay) and g is not regularized.
template <typename T>
GPUNET_INLINE void adam(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                 long n, T b1, T one_minus_b1, T b2, T one_minus_b2, T c2, T eps, T step_size,
                 T wd, T l1, int flags) {
    const bool use_wd = flags & WD, use_l1 = flags & L1, decoupled = flags & DECOUPLED;
    for (long i = 0; i < n; ++i) {
        if (decoupled) w[i] = w[i] * wd;
        const T s = regularized(w[i], g[i], wd, l1, use_wd, use_l1);
        T mi = m[i] * b1;
        mi = mi + s * one_minus_b1;
        m[i] = mi;
        T t = s * s;
        t = t * one_minus_b2;
        T vi = v[i] * b2;
        vi = vi + t;
        v[i] = vi;
        t = std::sqrt(vi);
        t = t / c2;
        t = t + eps;
        t = mi / t;
        t = t * step_size;
        w[i] = w[i] - t;
    }
}

}  // namespace

extern "C" {

GPUNET_CLONES void gpunet_sgd_f32(float* w, const float* g, float* buf, long n, double lr, double m,
                                  double wd, double l1, int flags) {
    sgd<float>(w, g, buf, n, (float)lr, (float)m, (float)wd, (float)l1, flags);
}

GPUNET_CLONES void gpunet_sgd_f64(double* w, const double* g, double* buf, long n, double lr, double m,
                                  double wd, double l1, int flags) {
    sgd<double>(w, g, buf, n, lr, m, wd, l1, flags);
}

}  // extern "C"

namespace {

// SGD and Adam over many parameters in one call, split over the thread team
// (gpunet_threads::split) in blocks of BLOCK elements: every element is updated on its own,
// so any split gives the same bits
struct ManyArgs {
    const int64_t* rows;        // SGD: (w, g, buf or 0, n, flags); Adam: (w, g, m, v, n, flags)
    const double* reals;        // Adam: (c2, step_size, wd) per row
    long count;
    double h[6];                // SGD: lr, m, wd, l1; Adam: b1, 1 - b1, b2, 1 - b2, eps, l1
};

const long BLOCK = 1L << 14;

// the rows' elements [lo * BLOCK, hi * BLOCK) in row order: f(row, first, length)
template <int WIDTH, typename F>
GPUNET_INLINE void blocks(const ManyArgs* a, long lo, long hi, F f) {
    const long from = lo * BLOCK, to = hi * BLOCK;
    long start = 0;
    for (long r = 0; r < a->count && start < to; ++r) {
        const long n = (long)a->rows[WIDTH * r + (WIDTH - 2)];
        const long b = from > start ? from - start : 0, e = to - start < n ? to - start : n;
        if (b < e) f(r, b, e - b);
        start += n;
    }
}

template <typename T>
GPUNET_INLINE void sgd_range(const ManyArgs* a, long lo, long hi) {
    blocks<5>(a, lo, hi, [a](long r, long b, long n) {
        const int64_t* t = a->rows + 5 * r;
        sgd<T>((T*)t[0] + b, (const T*)t[1] + b, t[2] ? (T*)t[2] + b : nullptr, n, (T)a->h[0], (T)a->h[1],
               (T)a->h[2], (T)a->h[3], (int)t[4]);
    });
}

template <typename T>
GPUNET_INLINE void adam_range(const ManyArgs* a, long lo, long hi) {
    blocks<6>(a, lo, hi, [a](long r, long b, long n) {
        const int64_t* t = a->rows + 6 * r;
        const double* x = a->reals + 3 * r;
        adam<T>((T*)t[0] + b, (const T*)t[1] + b, (T*)t[2] + b, (T*)t[3] + b, n, (T)a->h[0], (T)a->h[1],
                (T)a->h[2], (T)a->h[3], (T)x[0], (T)a->h[4], (T)x[1], (T)x[2], (T)a->h[5], (int)t[5]);
    });
}

}  // namespace

extern "C" {

GPUNET_CLONES void gpunet_sgd_many_range_f32(const ManyArgs* a, long lo, long hi) { sgd_range<float>(a, lo, hi); }
GPUNET_CLONES void gpunet_sgd_many_range_f64(const ManyArgs* a, long lo, long hi) { sgd_range<double>(a, lo, hi); }
GPUNET_CLONES void gpunet_adam_many_range_f32(const ManyArgs* a, long lo, long hi) { adam_range<float>(a, lo, hi); }
GPUNET_CLONES void gpunet_adam_many_range_f64(const ManyArgs* a, long lo, long hi) { adam_range<double>(a, lo, hi); }

}  // extern "C"

namespace {

// fewer elements than this: the caller's thread alone (a hand-off costs a few microseconds)
const long SPLIT_ELEMENTS = 1L << 18;

GPUNET_INLINE void run_many(void (*range)(const ManyArgs*, long, long), const ManyArgs& a, int width) {
    long total = 0;
    for (long r = 0; r < a.count; ++r) total += (long)a.rows[width * r + (width - 2)];
    const long nblocks = (total + BLOCK - 1) / BLOCK;
    if (total < SPLIT_ELEMENTS) range(&a, 0, nblocks);
    else gpunet_threads::split((gpunet_threads::Job)range, (void*)&a, nblocks);
}

}  // namespace

extern "C" {

// SGD over many parameters in one call (SGD.step on the CPU): table rows of five int64
// (w, g, buf or 0 without momentum, n, flags), each updated as gpunet_sgd_* updates it; the
// hyper-parameters are the optimizer's, shared by every row
void gpunet_sgd_many_f32(const int64_t* table, long rows, double lr, double m, double wd, double l1) {
    const ManyArgs a = {table, nullptr, rows, {lr, m, wd, l1, 0, 0}};
    run_many(gpunet_sgd_many_range_f32, a, 5);
}

void gpunet_sgd_many_f64(const int64_t* table, long rows, double lr, double m, double wd, double l1) {
    const ManyArgs a = {table, nullptr, rows, {lr, m, wd, l1, 0, 0}};
    run_many(gpunet_sgd_many_range_f64, a, 5);
}

// Adam over many parameters in one call (Adam.step and AdamW.step on the CPU): rows of six
// int64 (w, g, m, v, n, flags) and three doubles (c2, step_size, wd: the per-parameter
// values of gpunet_adam_*'s arguments), each updated as gpunet_adam_* updates it
void gpunet_adam_many_f32(const int64_t* rows, const double* reals, long count, double b1, double one_minus_b1,
                          double b2, double one_minus_b2, double eps, double l1) {
    const ManyArgs a = {rows, reals, count, {b1, one_minus_b1, b2, one_minus_b2, eps, l1}};
    run_many(gpunet_adam_many_range_f32, a, 6);
}

void gpunet_adam_many_f64(const int64_t* rows, const double* reals, long count, double b1, double one_minus_b1,
                          double b2, double one_minus_b2, double eps, double l1) {
    const ManyArgs a = {rows, reals, count, {b1, one_minus_b1, b2, one_minus_b2, eps, l1}};
    run_many(gpunet_adam_many_range_f64, a, 6);
}

GPUNET_CLONES void gpunet_adam_f32(float* w, const float* g, float* m, float* v, long n, double b1,
                                   double one_minus_b1, double b2, double one_minus_b2, double c2,
                                   double eps, double step_size, double wd, double l1, int flags) {
    adam<float>(w, g, m, v, n, (float)b1, (float)one_minus_b1, (float)b2, (float)one_minus_b2,
                (float)c2, (float)eps, (float)step_size, (float)wd, (float)l1, flags);
}

GPUNET_CLONES void gpunet_adam_f64(double* w, const double* g, double* m, double* v, long n, double b1,
                                   double one_minus_b1, double b2, double one_minus_b2, double c2,
                                   double eps, double step_size, double wd, double l1, int flags) {
    adam<double>(w, g, m, v, n, b1, one_minus_b1, b2, one_minus_b2, c2, eps, step_size, wd, l1, flags);
}

}  // extern "C"
