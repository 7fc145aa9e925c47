// defines: nothing: on the sim device, cuda_host.h (force-included) already provides what
// <cuda_fp16.h> declares for kernels, so that kernel sources may include it unchanged.
#pragma once
