// defines: softmax_xent_hard_warp<T, ITEMS>, softmax_xent_hard_block<T>, softmax_xent_soft_warp<T, ITEMS>, softmax_xent_soft_block<T> (T = float, double, __half; ITEMS = 8, 32), softmax_xent_count_valid<A> (A = float, double)
//
// Fused softmax cross-entropy: one kernel computes every row's loss and the gradient of
// the mean loss, so the softmax is never written to memory.
//
// Row r of logits z (C classes), target t, smoothing eps, scale = 1 / N_valid:
//     hard label y:   t_j = (1 - eps) [j == y] + eps / C
//     soft target q:  t_j = (1 - eps) q_j     + eps / C
//     lse = m + log(sum_j exp(z_j - m)),  m = max_j z_j     (finite for logits of +-1e4)
//     row_loss[r] = sum_j t_j (lse - z_j)
//     dlogits[r, j] = (softmax_j * sum_k t_k - t_j) * scale    (= (softmax - t) * scale
//                                                                for targets summing to 1)
// A hard-label row whose label equals ignore_index (when has_ignore) gets loss 0 and a
// zero gradient. has_ignore is two bits: bit 0, ignore_index applies; bit 1, the host's
// labels were unsigned (uint64, read here as their int64 bits), which only the record of a
// bad label keeps, so that the host names a label of 2**63 or more as given, not negative.
//
// Labels are checked on the device, without a host sync: a label outside [0, C) (and not
// ignore_index) gets a zero gradient and a NaN row loss, and is recorded in `status`, a
// long long[8] the launcher keeps per device (zeroed; the host reads it only when a loss
// it reads is not finite): status[0] counts bad labels; the first thread to claim
// status[1] (0 -> 1) writes its label, row, C, has_ignore and ignore_index to
// status[2..6]. While status[0] != 0 (an error not yet reported), every row loss is NaN,
// so the error stays sticky, as CUDA's are, until the host reads it. The kernels never
// index memory with a label (they compare j == y while scanning).
// The gradient is scaled by scale / n_valid[0]: the launcher passes the mean's divisor
// counted on the device by softmax_xent_count_valid, or a 1 (exact: scale / 1 == scale).
// Never a null pointer: CuPy 13 passes None as 0xffffffff (cupy/cupy#9046).
//
// Two shapes of work:
//   *_warp<T, ITEMS>: one warp per row, C <= 32 * ITEMS; lane l holds z[l + 32 k] in
//       registers, so logits are read once (max, then sum of exps, then the gradient).
//   *_block<T>: one block per row for larger C. Pass 1 reads the row once with an online
//       (max, sum-exp) per thread; pass 2 re-reads it (mostly from L2) to write the
//       gradient and sum the loss's terms in z - m; the loss is written after pass 2. Loads are 16-byte packs when C is a multiple of the pack width
//       and the arrays are 16-byte aligned.
// Sums of logits are taken relative to the row max m (in the block kernels during pass 2,
// once m is known), so that logits of +-1e4 do not cancel: every term z_j - m <= 0 is
// computed once and used for both the loss and the gradient.
//
// __half logits (mixed precision): storage only. T is the type of logits and dlogits,
// A = acc_t<T> (half.cuh: float for __half, T otherwise) that of everything else: the
// arithmetic, the row statistics, the row losses (float32), the soft targets (float32),
// eps, scale and n_valid. Each gradient element is computed in float and rounded once to
// half, after the multiplication by scale (the launcher folds a loss scale into it, so a
// scaled gradient is rounded, not a small unscaled one).
#include "common.cuh"
#include "half.cuh"

using gpunet::neg_inf;
using gpunet::dev_exp;
using gpunet::dev_log;
using gpunet::dev_max;
using gpunet::Pack;
using gpunet::acc_t;
using gpunet::from_acc;
using gpunet::to_acc;

namespace {

template <typename T> __device__ __forceinline__ void warp_lse(T& m, T& s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const T s2 = __shfl_xor_sync(0xffffffffu, s, o);
        gpunet::online_lse_combine(m, s, m2, s2);
    }
}

// Every thread gets the block's (max, sum of exp(z - max)).
template <typename T> __device__ __forceinline__ void block_lse(T& m, T& s, T* sm, T* ss) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    warp_lse(m, s);
    __syncthreads();
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < nwarps ? sm[lane] : neg_inf<T>();
    s = lane < nwarps ? ss[lane] : T(0);
    warp_lse(m, s);
}

// Fold P candidate values (some may be -inf = absent) into a running (m, s).
template <typename T, int P>
__device__ __forceinline__ void lse_update(T& m, T& s, const T (&v)[P]) {
    T lm = v[0];
#pragma unroll
    for (int k = 1; k < P; ++k) lm = dev_max(lm, v[k]);
    const T mn = dev_max(m, lm);
    if (mn == neg_inf<T>()) return;
    T acc = s * dev_exp(m - mn);
#pragma unroll
    for (int k = 0; k < P; ++k) acc += dev_exp(v[k] - mn);
    s = acc;
    m = mn;
}

template <typename T> __device__ __forceinline__ void zero_row(T* dz, int C, int tid, int nthreads) {
    for (int j = tid; j < C; j += nthreads) dz[j] = from_acc<T>(0);
}

// A 16-byte pack of storage values as P arithmetic values.
template <typename T, int P>
__device__ __forceinline__ void unpack(const Pack<T>& pk, acc_t<T> (&v)[P]) {
#pragma unroll
    for (int k = 0; k < P; ++k) v[k] = to_acc(pk.v[k]);
}

// The P targets q[i*P .. i*P + P) of a row whose targets are 16-byte aligned, in 16-byte
// packs of A (one pack for float and double logits, two for __half: P = 8 floats).
template <typename A, int P>
__device__ __forceinline__ void load_run(const A* __restrict__ q, int i, A (&t)[P]) {
    constexpr int QA = Pack<A>::N;
    const Pack<A>* qp = reinterpret_cast<const Pack<A>*>(q) + static_cast<long long>(i) * (P / QA);
#pragma unroll
    for (int h = 0; h < P / QA; ++h) {
        const Pack<A> pk = qp[h];
#pragma unroll
        for (int k = 0; k < QA; ++k) t[h * QA + k] = pk.v[k];
    }
}

template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}

// A label outside [0, C): counted, and the first one recorded (see the file's header).
__device__ __forceinline__ void flag_bad_label(long long* status, long long y, long long row,
                                               int C, long long ignore_index, int has_ignore) {
    unsigned long long* u = reinterpret_cast<unsigned long long*>(status);
    atomicAdd(u, 1ull);
    if (atomicCAS(u + 1, 0ull, 1ull) == 0ull) {
        status[2] = y;
        status[3] = row;
        status[4] = C;
        status[5] = has_ignore;
        status[6] = ignore_index;
    }
}

// The row's loss as written: NaN while a bad label is pending.
template <typename T> __device__ __forceinline__ T checked_loss(T loss, const long long* status) {
    return status[0] != 0 ? quiet_nan<T>() : loss;
}

// The gradient's scale (see the file's header).
template <typename T> __device__ __forceinline__ T row_scale(T scale, const T* n_valid) {
    return scale / n_valid[0];
}

// A hard-label row whose label y is ignore_index (when has_ignore) or outside [0, C): a zero
// gradient (written by threads tid, tid + nt, ...) and, by tid 0, a row loss of 0, or NaN
// with the bad label recorded. Whether the row is one (and done).
template <typename T>
__device__ __forceinline__ bool unscored(long long y, long long row, int C, long long ignore_index,
                                         int has_ignore, acc_t<T>* row_loss, T* dz,
                                         long long* status, int tid, int nt) {
    const bool ignored = (has_ignore & 1) && y == ignore_index;
    if (ignored || y < 0 || y >= C) {
        zero_row(dz, C, tid, nt);
        if (tid == 0) {
            row_loss[row] = ignored ? acc_t<T>(0) : quiet_nan<acc_t<T>>();
            if (!ignored) flag_bad_label(status, y, row, C, ignore_index, has_ignore);
        }
        return true;
    }
    return false;
}

// Lane l's logits z[l + 32 k] (-inf past C) into v; returns the row max (to every lane).
template <typename T, int ITEMS>
__device__ __forceinline__ acc_t<T> warp_load_row(const T* z, int C, int lane, acc_t<T> (&v)[ITEMS]) {
    using A = acc_t<T>;
    A m = neg_inf<A>();
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int j = lane + 32 * k;
        v[k] = j < C ? to_acc(z[j]) : neg_inf<A>();
        m = dev_max(m, v[k]);
    }
    return gpunet::warp_max(m);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Hard labels (int64), one warp per row.
// ---------------------------------------------------------------------------------------
template <typename T, int ITEMS>
__global__ void softmax_xent_hard_warp(const T* __restrict__ logits,
                                       const long long* __restrict__ labels,
                                       acc_t<T>* __restrict__ row_loss, T* __restrict__ dlogits,
                                       int N, int C, acc_t<T> eps, long long ignore_index,
                                       int has_ignore, acc_t<T> scale,
                                       const acc_t<T>* __restrict__ n_valid, long long* status) {
    using A = acc_t<T>;
    const int lane = threadIdx.x & 31;
    const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;  // the whole warp leaves together
    const T* z = logits + row * C;
    T* dz = dlogits + row * C;
    const long long y = labels[row];
    if (unscored(y, row, C, ignore_index, has_ignore, row_loss, dz, status, lane, 32)) return;
    scale = row_scale(scale, n_valid);
    A v[ITEMS];
    A m = warp_load_row(z, C, lane, v);
    // s = sum exp(z - m); dsum = sum (z - m); dy = z_y - m
    A s = A(0), dsum = A(0), dy = A(0);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int j = lane + 32 * k;
        if (j < C) {
            const A d = v[k] - m;
            dsum += d;
            if (j == y) dy = d;
            v[k] = dev_exp(d);
            s += v[k];
        }
    }
    s = gpunet::warp_sum(s);
    dsum = gpunet::warp_sum(dsum);
    dy = gpunet::warp_sum(dy);  // one lane holds it, the others 0
    const A on = A(1) - eps, off = eps / A(C);
    const A inv_s = A(1) / s;
    if (lane == 0) row_loss[row] = checked_loss(dev_log(s) - on * dy - off * dsum, status);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int j = lane + 32 * k;
        if (j < C) dz[j] = from_acc<T>((v[k] * inv_s - off - (j == y ? on : A(0))) * scale);
    }
}

// ---------------------------------------------------------------------------------------
// Hard labels (int64), one block per row.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void softmax_xent_hard_block(const T* __restrict__ logits,
                                        const long long* __restrict__ labels,
                                        acc_t<T>* __restrict__ row_loss, T* __restrict__ dlogits,
                                        int N, int C, acc_t<T> eps, long long ignore_index,
                                        int has_ignore, acc_t<T> scale,
                                        const acc_t<T>* __restrict__ n_valid, long long* status) {
    using A = acc_t<T>;
    __shared__ A sm[32], ss[32];
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long row = blockIdx.x;
    if (row >= N) return;
    const T* z = logits + row * C;
    T* dz = dlogits + row * C;
    const long long y = labels[row];
    if (unscored(y, row, C, ignore_index, has_ignore, row_loss, dz, status, tid, nt)) return;
    scale = row_scale(scale, n_valid);
    constexpr int P = Pack<T>::N;
    const bool packed =
        (C % P) == 0 && gpunet::is_aligned16(logits) && gpunet::is_aligned16(dlogits);
    // Pass 1: the row's (max m, sum of exp(z - m)) and z_y. The sum of logits waits for
    // pass 2, where it is taken relative to m: relative to any logit chosen before the max
    // is known (z[0] = -1e4, say) it would cancel against C (m - z[0]).
    A m = neg_inf<A>(), s = A(0), zy = A(0);
    if (packed) {
        const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z);
        for (int q = tid; q < C / P; q += nt) {
            A v[P];
            unpack(zp[q], v);
#pragma unroll
            for (int k = 0; k < P; ++k)
                if (q * P + k == y) zy = v[k];
            lse_update(m, s, v);
        }
    } else {
        for (int j0 = tid; j0 < C; j0 += 4 * nt) {
            A v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int j = j0 + k * nt;
                v[k] = j < C ? to_acc(z[j]) : neg_inf<A>();
                if (j == y) zy = v[k];
            }
            lse_update(m, s, v);
        }
    }
    block_lse(m, s, sm, ss);
    zy = gpunet::block_sum(zy, sm);
    const A on = A(1) - eps, off = eps / A(C);
    const A inv_s = A(1) / s;
    // Pass 2: the gradient, and dsum = sum (z - m) from the same differences.
    A dsum = A(0);
    if (packed) {
        const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z);
        Pack<T>* dp = reinterpret_cast<Pack<T>*>(dz);
        for (int q = tid; q < C / P; q += nt) {
            Pack<T> pk = zp[q];
#pragma unroll
            for (int k = 0; k < P; ++k) {
                const A d = to_acc(pk.v[k]) - m;
                dsum += d;
                pk.v[k] = from_acc<T>((dev_exp(d) * inv_s - off - (q * P + k == y ? on : A(0))) * scale);
            }
            dp[q] = pk;
        }
    } else {
        for (int j = tid; j < C; j += nt) {
            const A d = to_acc(z[j]) - m;
            dsum += d;
            dz[j] = from_acc<T>((dev_exp(d) * inv_s - off - (j == y ? on : A(0))) * scale);
        }
    }
    dsum = gpunet::block_sum(dsum, sm);
    // loss = log s - on (z_y - m) - off sum (z - m)
    if (tid == 0)
        row_loss[row] = checked_loss(dev_log(s) - on * (zy - m) - off * dsum, status);
}

// ---------------------------------------------------------------------------------------
// Soft targets (N, C) of A, one warp per row. z lives in registers; q is read twice
// (the second time from L1), because its loss terms need the row max first.
// ---------------------------------------------------------------------------------------
template <typename T, int ITEMS>
__global__ void softmax_xent_soft_warp(const T* __restrict__ logits,
                                       const acc_t<T>* __restrict__ target,
                                       acc_t<T>* __restrict__ row_loss, T* __restrict__ dlogits,
                                       int N, int C, acc_t<T> eps, acc_t<T> scale) {
    using A = acc_t<T>;
    const int lane = threadIdx.x & 31;
    const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const T* z = logits + row * C;
    const A* q = target + row * C;
    T* dz = dlogits + row * C;
    A v[ITEMS];
    A m = warp_load_row(z, C, lane, v);
    const A on = A(1) - eps, off = eps / A(C);
    // s = sum exp(z - m); tsum = sum t; tdot = sum t (z - m)
    A s = A(0), tsum = A(0), tdot = A(0);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int j = lane + 32 * k;
        if (j < C) {
            const A t = on * q[j] + off;
            const A d = v[k] - m;
            tsum += t;
            tdot += t * d;
            v[k] = dev_exp(d);
            s += v[k];
        }
    }
    s = gpunet::warp_sum(s);
    tsum = gpunet::warp_sum(tsum);
    tdot = gpunet::warp_sum(tdot);
    // sum t (lse - z) = tsum (m + log s) - sum t z = tsum log s - sum t (z - m)
    if (lane == 0) row_loss[row] = tsum * dev_log(s) - tdot;
    const A w = tsum / s;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int j = lane + 32 * k;
        if (j < C) dz[j] = from_acc<T>((v[k] * w - (on * q[j] + off)) * scale);
    }
}

// ---------------------------------------------------------------------------------------
// Soft targets, one block per row.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void softmax_xent_soft_block(const T* __restrict__ logits,
                                        const acc_t<T>* __restrict__ target,
                                        acc_t<T>* __restrict__ row_loss, T* __restrict__ dlogits,
                                        int N, int C, acc_t<T> eps, acc_t<T> scale) {
    using A = acc_t<T>;
    __shared__ A sm[32], ss[32];
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long row = blockIdx.x;
    if (row >= N) return;
    const T* z = logits + row * C;
    const A* q = target + row * C;
    T* dz = dlogits + row * C;
    const A on = A(1) - eps, off = eps / A(C);
    // Pass 1: (max m, sum of exp(z - m)) and tsum = sum t. tdot = sum t (z - m) waits for
    // pass 2, where m is known: relative to a logit chosen before (z[0] = -1e4, say) it
    // would cancel against tsum (m - z[0]).
    A m = neg_inf<A>(), s = A(0), tsum = A(0);
    constexpr int P = Pack<T>::N;
    const bool packed = (C % P) == 0 && gpunet::is_aligned16(logits) &&
                        gpunet::is_aligned16(target) && gpunet::is_aligned16(dlogits);
    if (packed) {
        const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z);
        for (int i = tid; i < C / P; i += nt) {
            A v[P], t[P];
            unpack(zp[i], v);
            load_run(q, i, t);
            lse_update(m, s, v);
#pragma unroll
            for (int k = 0; k < P; ++k) tsum += on * t[k] + off;
        }
    } else {
        for (int j0 = tid; j0 < C; j0 += 4 * nt) {
            A v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int j = j0 + k * nt;
                v[k] = j < C ? to_acc(z[j]) : neg_inf<A>();
                if (j < C) tsum += on * q[j] + off;
            }
            lse_update(m, s, v);
        }
    }
    block_lse(m, s, sm, ss);
    tsum = gpunet::block_sum(tsum, sm);
    const A w = tsum / s;
    // Pass 2: the gradient, and tdot from the same t and z - m.
    A tdot = A(0);
    if (packed) {
        const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z);
        Pack<T>* dp = reinterpret_cast<Pack<T>*>(dz);
        for (int i = tid; i < C / P; i += nt) {
            Pack<T> pz = zp[i];
            A qq[P];
            load_run(q, i, qq);
#pragma unroll
            for (int k = 0; k < P; ++k) {
                const A d = to_acc(pz.v[k]) - m, t = on * qq[k] + off;
                tdot += t * d;
                pz.v[k] = from_acc<T>((dev_exp(d) * w - t) * scale);
            }
            dp[i] = pz;
        }
    } else {
        for (int j = tid; j < C; j += nt) {
            const A d = to_acc(z[j]) - m, t = on * q[j] + off;
            tdot += t * d;
            dz[j] = from_acc<T>((dev_exp(d) * w - t) * scale);
        }
    }
    tdot = gpunet::block_sum(tdot, sm);
    // sum t (lse - z) = tsum (m + log s) - sum t z = tsum log s - sum t (z - m)
    if (tid == 0) row_loss[row] = tsum * dev_log(s) - tdot;
}

// ---------------------------------------------------------------------------------------
// The mean's divisor on the device: n_valid[0] = max(1, number of labels != ignore_index).
// One block.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void softmax_xent_count_valid(const long long* __restrict__ labels, int N,
                                         long long ignore_index, T* __restrict__ n_valid) {
    __shared__ int scratch[32];
    int n = 0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) n += labels[i] != ignore_index ? 1 : 0;
    n = gpunet::block_sum(n, scratch);
    if (threadIdx.x == 0) n_valid[0] = T(n > 0 ? n : 1);
}

// Explicit instantiations: nvcc compiles every variant the loader asks NVRTC for. T is
// the storage type of logits and dlogits, A = acc_t<T> that of the arithmetic, the row
// losses, the targets and the scalars (count_valid exists for A only).
#define GPUNET_SOFTMAX_XENT_INSTANTIATE(T, A)                                                  \
    template __global__ void softmax_xent_hard_warp<T, 8>(const T*, const long long*, A*, T*,   \
                                                          int, int, A, long long, int, A,      \
                                                          const A*, long long*);               \
    template __global__ void softmax_xent_hard_warp<T, 32>(const T*, const long long*, A*, T*,  \
                                                           int, int, A, long long, int, A,     \
                                                           const A*, long long*);              \
    template __global__ void softmax_xent_hard_block<T>(const T*, const long long*, A*, T*, int, \
                                                        int, A, long long, int, A, const A*,   \
                                                        long long*);                           \
    template __global__ void softmax_xent_soft_warp<T, 8>(const T*, const A*, A*, T*, int, int,  \
                                                          A, A);                               \
    template __global__ void softmax_xent_soft_warp<T, 32>(const T*, const A*, A*, T*, int, int, \
                                                           A, A);                              \
    template __global__ void softmax_xent_soft_block<T>(const T*, const A*, A*, T*, int, int, A, \
                                                        A);

GPUNET_SOFTMAX_XENT_INSTANTIATE(float, float)
GPUNET_SOFTMAX_XENT_INSTANTIATE(double, double)
GPUNET_SOFTMAX_XENT_INSTANTIATE(__half, float)
template __global__ void softmax_xent_count_valid<float>(const long long*, int, long long, float*);
template __global__ void softmax_xent_count_valid<double>(const long long*, int, long long, double*);
