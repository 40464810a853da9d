// What every kernel file includes: the qualifiers that differ between nvcc and the host
// emulator (emulate/cuda_host.h compiles these files as C for the tests), and the f32
// functions of gnmt-kernels' `real.rs`, written with the same operations in the same order.
//
// nvcc runs with -fmad=false and IEEE division and square root (no fast math), and the host
// compiler with -ffp-contract=off, so an element-wise kernel built from these functions
// gives the bits of the CPU kernel it mirrors. Reductions over a row add in another order
// (a tree over ROW_BLOCK threads) and agree to rounding.
#ifndef GNMT_COMMON_CUH
#define GNMT_COMMON_CUH

#ifdef __CUDACC__
#define KERNEL extern "C" __global__ void
#define DEVICE static __device__ __forceinline__
DEVICE unsigned int float_bits(float x) { return __float_as_uint(x); }
DEVICE float bits_float(unsigned int b) { return __uint_as_float(b); }
#define NEG_INFINITY (-__uint_as_float(0x7f800000u))
#define TRAP() __trap()
#else
// The host emulator defines threadIdx, __shared__, __syncthreads() and friends.
#define KERNEL void
#define DEVICE static inline
DEVICE unsigned int float_bits(float x) {
    union { float f; unsigned int u; } v;
    v.f = x;
    return v.u;
}
DEVICE float bits_float(unsigned int b) {
    union { float f; unsigned int u; } v;
    v.u = b;
    return v.f;
}
#define NEG_INFINITY (-INFINITY)
#define TRAP() abort()
#endif

// Threads per block of the kernels that reduce a row (one block per row). The launches in
// src/lib.rs use the same number (ROW_BLOCK there); the kernels refuse any other block size.
#define ROW_BLOCK 256

// Rust's `x.clamp(lo, hi)`: NaN passes through.
DEVICE float clamp(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// gnmt_kernels::real::fast_exp: n ln2 + r, a degree-6 polynomial, 2^n into the exponent bits.
DEVICE float fast_exp(float x) {
    const float LOG2E = 1.44269504088896340736f;
    const float LN2_HI = 0.69314575f;
    const float LN2_LO = 1.4286068e-6f;
    const float ROUND = 12582912.0f;
    x = clamp(x, -87.3f, 88.3f);
    float shifted = x * LOG2E + ROUND;
    float n = shifted - ROUND;
    float r = x - n * LN2_HI - n * LN2_LO;
    float p = 1.0f
        + r * (1.0f
            + r * (0.5f
                + r * (1.0f / 6.0f
                    + r * (1.0f / 24.0f + r * (1.0f / 120.0f + r * (1.0f / 720.0f))))));
    unsigned int bits = ((float_bits(shifted) - 0x4b400000u) + 127u) << 23;
    return p * bits_float(bits);
}

// gnmt_kernels::real::fast_tanh: Eigen's 13/6 rational function.
DEVICE float fast_tanh(float x) {
    const float A1 = 4.8935246e-3f;
    const float A3 = 6.3726193e-4f;
    const float A5 = 1.4857224e-5f;
    const float A7 = 5.122297e-8f;
    const float A9 = -8.604672e-11f;
    const float A11 = 2.000188e-13f;
    const float A13 = -2.7607685e-16f;
    const float B0 = 4.893525e-3f;
    const float B2 = 2.2684346e-3f;
    const float B4 = 1.1853471e-4f;
    const float B6 = 1.1982584e-6f;
    x = clamp(x, -7.905311f, 7.905311f);
    float x2 = x * x;
    float p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p = p * x;
    float q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    return p / q;
}

// (1 + tanh(x / 2)) / 2, as the CPU's f32 sigmoid.
DEVICE float sigmoid(float x) {
    return 0.5f * fast_tanh(0.5f * x) + 0.5f;
}

// Index of this thread in a one-dimensional grid, and the grid's stride.
#define GLOBAL_INDEX ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x)
#define GLOBAL_STRIDE ((unsigned long long)gridDim.x * blockDim.x)

#endif
