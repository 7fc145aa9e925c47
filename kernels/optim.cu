// defines: mt_sgd<T>, mt_adam<T>, mt_rmsprop<T>, mt_adagrad<T>, mt_grad_sumsq<T>, mt_grad_scale<T>, mt_grad_clamp<T> (T = float, double), amp_update_scale: multi-tensor optimizer steps and gradient clipping, one launch for any number of tensors; the loss scaler's update
//
// Multi-tensor apply. One launch updates every tensor of a list; the list is
//   * a device table of MtEntry rows (parameter and state addresses, sizes, the address of
//     the tensor's step counter, decay flag, gradient address), built by the host and
//     rebuilt only when one of those changes, and
//   * the first 64 gradients, also passed as kernel arguments g00 .. g77 (tensor j < 64 in
//     g<j/8><j%8>; the unused ones are never read): gradients are new arrays after every
//     zero_grad() and backward, and kernel arguments travel with the launch, so a step of
//     up to 64 tensors copies nothing to the device whatever the gradients' addresses.
//     Tensor j >= 64 reads its gradient's address from its row (entry.g): the host
//     rewrites the table when one of those moved (never under a CUDA graph, whose
//     addresses are fixed).
// Each tensor is cut into chunks of MT_CHUNK elements, numbered across the list
// (entry.chunk0 is the tensor's first chunk); blocks stride over the chunks and find a
// chunk's tensor by binary search in the table.
//
// Device-resident scalars (so that a step needs no host value that a CUDA graph would
// freeze): the learning rate is read from *lr (a device double the host rewrites only
// when the schedule changes it), each tensor's step count from *entry.step (a device
// int64, incremented here by the last block to finish), and with MT_FOUND the step is
// skipped as a whole (nothing written, no count incremented) when *found, the loss
// scaler's sum of squares of the gradients, is not finite.
//
// Arithmetic is the NumPy reference's (gpunet/optim.py), operation for operation, each
// product and sum rounded to T (the __*_rn intrinsics keep the compiler from contracting
// them into FMAs): with equal step counts the result is the NumPy one bit for bit (up to
// -ftz on denormals and the GPU's pow()). Hyper-parameters come as doubles, computed by
// the host as Python computes them, and are rounded to T here, as NumPy rounds a Python
// float scalar; the step-dependent ones (Adam's lr/(1-b1^n), sqrt(1-b2^n), AdamW's
// 1-lr*wd) are computed here in double, as Python computes them.
#include "common.cuh"

using gpunet::add_rn;
using gpunet::div_rn;
using gpunet::mul_rn;
using gpunet::sqrt_rn;
using gpunet::sub_rn;

#define MT_MAX 64
#define MT_CHUNK 2048

// flags
#define MT_WD 1          // weight_decay != 0 (L2 in the gradient; AdamW: decoupled)
#define MT_L1 2          // l1 != 0
#define MT_MOMENTUM 4    // momentum != 0
#define MT_NESTEROV 8
#define MT_DECOUPLED 16  // AdamW: w *= 1 - lr*weight_decay instead of L2
#define MT_FOUND 32      // skip the step when *found is not finite (the loss scaler's check)
#define MT_ALWAYS 64     // mt_grad_scale: scale by *coef unconditionally (the scaler's 1/S)

// One tensor of the list (8 words of 8 bytes; the host writes the same layout, int64).
struct MtEntry {
    unsigned long long w;     // parameter data (T*)
    unsigned long long s1;    // first state buffer (T*), 0 when unused
    unsigned long long s2;    // second state buffer (T*), 0 when unused
    long long n;              // elements
    long long chunk0;         // index of the tensor's first chunk in the list
    unsigned long long step;  // the tensor's step count (long long*), 0 when unused
    long long decay;          // 1: weight decay and L1 apply to this tensor
    unsigned long long g;     // gradient (T*) of a tensor j >= MT_MAX (0 below: an argument)
};

#define MT_G8(Q, a)                                                                            \
    Q* __restrict__ g##a##0, Q* __restrict__ g##a##1, Q* __restrict__ g##a##2,                 \
        Q* __restrict__ g##a##3, Q* __restrict__ g##a##4, Q* __restrict__ g##a##5,             \
        Q* __restrict__ g##a##6, Q* __restrict__ g##a##7
#define MT_GRADS(Q)                                                                            \
    MT_G8(Q, 0), MT_G8(Q, 1), MT_G8(Q, 2), MT_G8(Q, 3), MT_G8(Q, 4), MT_G8(Q, 5), MT_G8(Q, 6), \
        MT_G8(Q, 7)
#define MT_SET8(s, a)                                                                          \
    s[8 * a + 0] = g##a##0;                                                                    \
    s[8 * a + 1] = g##a##1;                                                                    \
    s[8 * a + 2] = g##a##2;                                                                    \
    s[8 * a + 3] = g##a##3;                                                                    \
    s[8 * a + 4] = g##a##4;                                                                    \
    s[8 * a + 5] = g##a##5;                                                                    \
    s[8 * a + 6] = g##a##6;                                                                    \
    s[8 * a + 7] = g##a##7;
// Thread 0 copies the 64 gradient arguments into shared memory, where a tensor index can
// pick one.
#define MT_GATHER_GRADS(s)                                                                     \
    if (threadIdx.x == 0) {                                                                    \
        MT_SET8(s, 0) MT_SET8(s, 1) MT_SET8(s, 2) MT_SET8(s, 3)                                \
        MT_SET8(s, 4) MT_SET8(s, 5) MT_SET8(s, 6) MT_SET8(s, 7)                                \
    }                                                                                          \
    __syncthreads();

namespace mt {

// numpy.sign: -1, 0 or 1, NaN for NaN.
template <typename T> __device__ __forceinline__ T sign(T w) {
    return w > T(0) ? T(1) : (w < T(0) ? T(-1) : (w == T(0) ? T(0) : w));
}

// g + weight_decay*w + l1*sign(w), in Optimizer._regularized's order.
template <typename T>
__device__ __forceinline__ T regularized(T g, T w, T wd, T l1, int flags) {
    if (flags & MT_WD) g = add_rn(mul_rn(w, wd), g);
    if (flags & MT_L1) g = add_rn(g, mul_rn(sign(w), l1));
    return g;
}

// The tensor that chunk c belongs to: the last entry with chunk0 <= c.
__device__ __forceinline__ int find(const MtEntry* __restrict__ table, int ntensors, long long c) {
    int lo = 0, hi = ntensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (table[mid].chunk0 <= c) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Chunk c of the list: its tensor j, that tensor's row e, and the chunk's element range
// [begin, end) within the tensor.
struct Chunk {
    int j;
    MtEntry e;
    long long begin;
    long long end;
};

__device__ __forceinline__ void locate(const MtEntry* __restrict__ table, int ntensors, long long c,
                                       Chunk& k) {
    k.j = find(table, ntensors, c);
    k.e = table[k.j];
    k.begin = (c - k.e.chunk0) * MT_CHUNK;
    k.end = k.begin + MT_CHUNK < k.e.n ? k.begin + MT_CHUNK : k.e.n;
}

// The chunk's gradient: an argument (in shared memory) for tensor j < MT_MAX, else from its row.
template <typename Q>
__device__ __forceinline__ Q* grad(Q* const* gs, const Chunk& k) {
    return k.j < MT_MAX ? gs[k.j] : reinterpret_cast<Q*>(k.e.g);
}

// Whether the step is skipped: MT_FOUND and *found (a sum of squares) not finite.
__device__ __forceinline__ bool skipped(const double* found, int flags) {
    if (!(flags & MT_FOUND)) return false;
    const double f = *found;
    return !(f - f == 0.0);
}

// The tensor's step count this launch (1 at its first update).
__device__ __forceinline__ long long step_of(const MtEntry& e) {
    return *reinterpret_cast<const long long*>(e.step) + 1;
}

// After a block's last read of the step counters: the last block to finish (a ticket
// counter, reset to 0 for the next launch) increments every tensor's count. Every block
// reads the counters before taking its ticket, so none sees an incremented one.
__device__ __forceinline__ void advance_steps(const MtEntry* __restrict__ table, int ntensors,
                                              unsigned int* __restrict__ ticket) {
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int j = threadIdx.x; j < ntensors; j += blockDim.x) {
        if (table[j].step) *reinterpret_cast<long long*>(table[j].step) += 1;
    }
    if (threadIdx.x == 0) *ticket = 0u;
}

}  // namespace mt

// ---------------------------------------------------------------------------------------
// Optimizer steps. *lr is the learning rate, *found the scaler's check (read with
// MT_FOUND), ticket the launch's last-block counter (0 between launches).
// ---------------------------------------------------------------------------------------

// SGD: g = grad (+ wd*w + l1*sign(w) on decay rows); with momentum b = g at the first step,
// else b = momentum*b + g; w -= lr*b, or lr*(g + momentum*b) with Nesterov; else w -= lr*g.
// State s1: the momentum buffer.
template <typename T>
__global__ void mt_sgd(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                       const double* __restrict__ lr, double momentum, double weight_decay,
                       double l1, int flags, const double* __restrict__ found,
                       unsigned int* __restrict__ ticket, MT_GRADS(const T)) {
    __shared__ const T* gs[MT_MAX];
    if (mt::skipped(found, flags)) return;
    MT_GATHER_GRADS(gs)
    const T lr_ = T(*lr), m = T(momentum), wd = T(weight_decay), l1_ = T(l1);
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        const MtEntry& e = k.e;
        T* __restrict__ w = reinterpret_cast<T*>(e.w);
        T* __restrict__ buf = reinterpret_cast<T*>(e.s1);
        const T* __restrict__ g = mt::grad(gs, k);
        const bool first = mt::step_of(e) == 1;
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            const T wv = w[i];
            T gv = g[i];
            if (e.decay) gv = mt::regularized(gv, wv, wd, l1_, flags);
            T t;
            if (flags & MT_MOMENTUM) {
                const T b = first ? gv : add_rn(mul_rn(buf[i], m), gv);
                buf[i] = b;
                t = (flags & MT_NESTEROV) ? mul_rn(add_rn(mul_rn(b, m), gv), lr_)
                                          : mul_rn(b, lr_);
            } else {
                t = mul_rn(gv, lr_);
            }
            w[i] = sub_rn(wv, t);
        }
    }
    mt::advance_steps(table, ntensors, ticket);
}

// Adam / AdamW (torch.optim.Adam, amsgrad=False), with n the tensor's step count:
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//   w -= lr/(1-b1^n) * m / (sqrt(v)/sqrt(1-b2^n) + eps)
// Adam: g regularized as SGD's. AdamW (MT_DECOUPLED): w *= 1 - lr*wd first, on decay rows.
// step_size = lr/(1-b1^n) and bias2 = sqrt(1-b2^n) are computed per tensor in double.
// State: s1 = m (exp_avg), s2 = v (exp_avg_sq).
template <typename T>
__global__ void mt_adam(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                        const double* __restrict__ lr, double beta1, double one_minus_beta1,
                        double beta2, double one_minus_beta2, double eps, double weight_decay,
                        double l1, int flags, const double* __restrict__ found,
                        unsigned int* __restrict__ ticket, MT_GRADS(const T)) {
    __shared__ const T* gs[MT_MAX];
    if (mt::skipped(found, flags)) return;
    MT_GATHER_GRADS(gs)
    const double lrd = *lr;
    const T b1 = T(beta1), omb1 = T(one_minus_beta1), b2 = T(beta2), omb2 = T(one_minus_beta2);
    const T eps_ = T(eps), wd = T(weight_decay), l1_ = T(l1);
    const T df = T(__dsub_rn(1.0, __dmul_rn(lrd, weight_decay)));
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        const MtEntry& e = k.e;
        const double n = static_cast<double>(mt::step_of(e));
        const T ss_ = T(__ddiv_rn(lrd, __dsub_rn(1.0, pow(beta1, n))));
        const T bc2_ = T(__dsqrt_rn(__dsub_rn(1.0, pow(beta2, n))));
        T* __restrict__ w = reinterpret_cast<T*>(e.w);
        T* __restrict__ m = reinterpret_cast<T*>(e.s1);
        T* __restrict__ v = reinterpret_cast<T*>(e.s2);
        const T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            T wv = w[i];
            T gv = g[i];
            if (e.decay) {
                if (flags & MT_DECOUPLED) {
                    if (flags & MT_WD) wv = mul_rn(wv, df);
                } else {
                    gv = mt::regularized(gv, wv, wd, l1_, flags);
                }
            }
            const T mv = add_rn(mul_rn(m[i], b1), mul_rn(gv, omb1));
            const T vv = add_rn(mul_rn(v[i], b2), mul_rn(mul_rn(gv, gv), omb2));
            m[i] = mv;
            v[i] = vv;
            T t = add_rn(div_rn(sqrt_rn(vv), bc2_), eps_);
            t = mul_rn(div_rn(mv, t), ss_);
            w[i] = sub_rn(wv, t);
        }
    }
    mt::advance_steps(table, ntensors, ticket);
}

// RMSProp (torch.optim.RMSprop, centered=False):
//   v = alpha*v + (1-alpha)*g*g;  t = g/(sqrt(v) + eps)
//   momentum: b = momentum*b + t, w -= lr*b;  else w -= lr*t
// State: s1 = v (square_avg), s2 = b (momentum_buffer, with momentum).
template <typename T>
__global__ void mt_rmsprop(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                           const double* __restrict__ lr, double alpha, double one_minus_alpha,
                           double eps, double momentum, int flags,
                           const double* __restrict__ found, unsigned int* __restrict__ ticket,
                           MT_GRADS(const T)) {
    __shared__ const T* gs[MT_MAX];
    if (mt::skipped(found, flags)) return;
    MT_GATHER_GRADS(gs)
    const T lr_ = T(*lr), a = T(alpha), oma = T(one_minus_alpha), eps_ = T(eps), mom = T(momentum);
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        const MtEntry& e = k.e;
        T* __restrict__ w = reinterpret_cast<T*>(e.w);
        T* __restrict__ v = reinterpret_cast<T*>(e.s1);
        T* __restrict__ buf = reinterpret_cast<T*>(e.s2);
        const T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            const T gv = g[i];
            const T vv = add_rn(mul_rn(v[i], a), mul_rn(mul_rn(gv, gv), oma));
            v[i] = vv;
            T t = div_rn(gv, add_rn(sqrt_rn(vv), eps_));
            if (flags & MT_MOMENTUM) {
                const T b = add_rn(mul_rn(buf[i], mom), t);
                buf[i] = b;
                t = mul_rn(b, lr_);
            } else {
                t = mul_rn(t, lr_);
            }
            w[i] = sub_rn(w[i], t);
        }
    }
    mt::advance_steps(table, ntensors, ticket);
}

// AdaGrad (torch.optim.Adagrad, lr_decay=0): s += g*g;  w -= lr * g/(sqrt(s) + eps).
// State: s1 = s (sum).
template <typename T>
__global__ void mt_adagrad(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                           const double* __restrict__ lr, double eps, int flags,
                           const double* __restrict__ found, unsigned int* __restrict__ ticket,
                           MT_GRADS(const T)) {
    __shared__ const T* gs[MT_MAX];
    if (mt::skipped(found, flags)) return;
    MT_GATHER_GRADS(gs)
    const T lr_ = T(*lr), eps_ = T(eps);
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        const MtEntry& e = k.e;
        T* __restrict__ w = reinterpret_cast<T*>(e.w);
        T* __restrict__ s = reinterpret_cast<T*>(e.s1);
        const T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            const T gv = g[i];
            const T sv = add_rn(s[i], mul_rn(gv, gv));
            s[i] = sv;
            const T t = mul_rn(div_rn(gv, add_rn(sqrt_rn(sv), eps_)), lr_);
            w[i] = sub_rn(w[i], t);
        }
    }
    mt::advance_steps(table, ntensors, ticket);
}

// ---------------------------------------------------------------------------------------
// Gradient clipping and loss-scaler checks: only entry.n, entry.chunk0 and entry.g of
// the table are read.
// ---------------------------------------------------------------------------------------

// Sum of squares of every gradient, in double. Each block writes its partial sum to
// partials[blockIdx.x]; the last block to finish (a ticket counter, reset to 0 for the
// next launch) adds them in block order, so the result does not depend on the schedule:
//   sum = partials[0] + ... + partials[gridDim.x-1]  (+ *acc when accumulate)
// finalize == 0: *acc = sum (another dtype's launch follows). finalize == 1:
//   *total = sqrt(sum);  *coef = max_norm / (*total + 1e-6) when *total is finite, else 1
// (clip_grad_norm's rule: the gradients are scaled by coef when coef < 1).
// finalize == 2 (the loss scaler's check): *total = sum, and *coef = 1 when sum is not
// finite (coef is then the scaler's found_any flag, which collects every optimizer of
// one iteration).
template <typename T>
__global__ void mt_grad_sumsq(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                              double* __restrict__ partials, unsigned int* __restrict__ ticket,
                              double* __restrict__ acc, int accumulate, int finalize,
                              double max_norm, double* __restrict__ total,
                              double* __restrict__ coef, MT_GRADS(const T)) {
    __shared__ const T* gs[MT_MAX];
    __shared__ double scratch[32];
    __shared__ bool last;
    MT_GATHER_GRADS(gs)
    double s = 0.0;
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        const T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            const double x = static_cast<double>(g[i]);
            s += x * x;
        }
    }
    s = gpunet::block_sum(s, scratch);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = s;
        __threadfence();
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile double* vp = partials;
    double p = 0.0;
    // One partial per thread and round (the grid is at most a few blocks per SM), summed
    // in a fixed order.
    for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) p += vp[b];
    p = gpunet::block_sum(p, scratch);
    if (threadIdx.x == 0) {
        if (accumulate) p += *acc;
        if (finalize == 1) {
            const double t = __dsqrt_rn(p);
            *total = t;
            *coef = (t - t == 0.0) ? __ddiv_rn(max_norm, __dadd_rn(t, 1e-6)) : 1.0;
        } else if (finalize == 2) {
            *total = p;
            if (!(p - p == 0.0)) *coef = 1.0;
        } else {
            *acc = p;
        }
        *ticket = 0u;
    }
}

// g *= coef, every gradient, when *coef < 1, or always with MT_ALWAYS (read on the
// device: no host sync).
template <typename T>
__global__ void mt_grad_scale(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                              const double* __restrict__ coef, int flags, MT_GRADS(T)) {
    __shared__ T* gs[MT_MAX];
    MT_GATHER_GRADS(gs)
    const double cd = *coef;
    if (!(flags & MT_ALWAYS) && !(cd < 1.0)) return;
    const T cv = T(cd);
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) g[i] = mul_rn(g[i], cv);
    }
}

// g = clip(g, -clip, clip), every gradient (NaN stays NaN, as numpy.clip).
template <typename T>
__global__ void mt_grad_clamp(const MtEntry* __restrict__ table, int ntensors, long long nchunks,
                              double clip, MT_GRADS(T)) {
    __shared__ T* gs[MT_MAX];
    MT_GATHER_GRADS(gs)
    const T lo = T(-clip), hi = T(clip);
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        mt::Chunk k;
        mt::locate(table, ntensors, c, k);
        T* __restrict__ g = mt::grad(gs, k);
        for (long long i = k.begin + threadIdx.x; i < k.end; i += blockDim.x) {
            T x = g[i];
            x = x < lo ? lo : x;
            g[i] = x > hi ? hi : x;
        }
    }
}

// The loss scaler's update (torch.amp's _amp_update_scale_), one thread, after the
// iteration's checks (mt_grad_sumsq, finalize 2) and steps:
//   *found_any != 0: S = float(S * backoff), tracker = 0
//   else: tracker += 1; at growth_interval (or past it, when growth_interval was lowered
//         below the count): S = float(S * growth) when that is finite in float32, tracker = 0
// then *inv_scale = 1/S (double) and *found_any = 0 for the next iteration.
__global__ void amp_update_scale(double* __restrict__ found_any, float* __restrict__ scale,
                                            double* __restrict__ inv_scale,
                                            long long* __restrict__ tracker, double growth,
                                            double backoff, long long growth_interval) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const double s = static_cast<double>(*scale);
    if (*found_any != 0.0) {
        *scale = static_cast<float>(__dmul_rn(s, backoff));
        *tracker = 0;
    } else {
        long long t = *tracker + 1;
        if (t >= growth_interval) {
            const double grown = __dmul_rn(s, growth);
            // float(grown) is finite iff grown < 2^128 - 2^103 (halfway to 2^128 rounds up)
            if (grown < 3.4028235677973366e38) *scale = static_cast<float>(grown);
            t = 0;
        }
        *tracker = t;
    }
    *inv_scale = __ddiv_rn(1.0, static_cast<double>(*scale));
    *found_any = 0.0;
}

#define MT_INSTANTIATE(T)                                                                      \
    template __global__ void mt_sgd<T>(const MtEntry*, int, long long, const double*, double,  \
                                       double, double, int, const double*, unsigned int*,      \
                                       MT_GRADS(const T));                                     \
    template __global__ void mt_adam<T>(const MtEntry*, int, long long, const double*, double, \
                                        double, double, double, double, double, double, int,   \
                                        const double*, unsigned int*, MT_GRADS(const T));      \
    template __global__ void mt_rmsprop<T>(const MtEntry*, int, long long, const double*,      \
                                           double, double, double, double, int, const double*, \
                                           unsigned int*, MT_GRADS(const T));                  \
    template __global__ void mt_adagrad<T>(const MtEntry*, int, long long, const double*,      \
                                           double, int, const double*, unsigned int*,          \
                                           MT_GRADS(const T));                                 \
    template __global__ void mt_grad_sumsq<T>(const MtEntry*, int, long long, double*,         \
                                              unsigned int*, double*, int, int, double, double*, \
                                              double*, MT_GRADS(const T));                     \
    template __global__ void mt_grad_scale<T>(const MtEntry*, int, long long, const double*,   \
                                              int, MT_GRADS(T));                               \
    template __global__ void mt_grad_clamp<T>(const MtEntry*, int, long long, double, MT_GRADS(T));

MT_INSTANTIATE(float)
MT_INSTANTIATE(double)
