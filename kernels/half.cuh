// defines: gpunet::Acc<T> (the arithmetic type of storage type T: float for __half, T otherwise), gpunet::acc_t<T>, gpunet::to_acc, gpunet::from_acc<T>: half storage with float arithmetic
//
// A kernel templated on its storage type T loads with to_acc, computes in Acc<T>::type and
// stores with from_acc<T> (round to nearest even). For float and double these are the
// identity, so their code is unchanged; for __half the arithmetic is float and each stored
// value is rounded once, which is what the tests' reference does (NumPy in float32, then
// .astype(float16)). The explicit __half2float/__float2half_rn calls work whether or not
// __CUDA_NO_HALF_CONVERSIONS__ is defined.
#pragma once

#include <cuda_fp16.h>

namespace gpunet {

template <typename T> struct Acc { using type = T; };
template <> struct Acc<__half> { using type = float; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename T> __device__ __forceinline__ T to_acc(T v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type a) { return a; }
template <> __device__ __forceinline__ __half from_acc<__half>(float a) { return __float2half_rn(a); }

}  // namespace gpunet
