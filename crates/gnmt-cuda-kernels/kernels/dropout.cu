// Inverted dropout with the CPU's masks (gnmt-kernels' dropout.rs), generated where the
// activations are: mask element i is decided by word (start + i) of the ChaCha20 stream of the
// run's generator (rand_chacha's ChaCha20Rng: key, 64-bit stream id, 64-bit block counter),
// kept when its top 24 bits are below `threshold` = (1 - p) 2^24. So a GPU drops exactly the
// elements the CPU drops for the same seed, no mask crosses the bus, and the backward pass
// recomputes the mask instead of storing it.
#include "common.cuh"

#define ROTATE(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define QUARTER(a, b, c, d)                          \
    a += b; d ^= a; d = ROTATE(d, 16);               \
    c += d; b ^= c; b = ROTATE(b, 12);               \
    a += b; d ^= a; d = ROTATE(d, 8);                \
    c += d; b ^= c; b = ROTATE(b, 7);

// Block `counter` of the ChaCha20 stream (`key` 8 words, `stream` id) into `out` (16 words).
DEVICE void chacha20_block(const unsigned int* key, unsigned long long counter,
                           unsigned long long stream, unsigned int* out) {
    unsigned int s[16], x[16];
    s[0] = 0x61707865u;
    s[1] = 0x3320646eu;
    s[2] = 0x79622d32u;
    s[3] = 0x6b206574u;
    for (int i = 0; i < 8; i++) s[4 + i] = key[i];
    s[12] = (unsigned int)counter;
    s[13] = (unsigned int)(counter >> 32);
    s[14] = (unsigned int)stream;
    s[15] = (unsigned int)(stream >> 32);
    for (int i = 0; i < 16; i++) x[i] = s[i];
    for (int round = 0; round < 10; round++) {
        QUARTER(x[0], x[4], x[8], x[12]);
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]);
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) out[i] = x[i] + s[i];
}

// out[i] = x[i] * (kept ? scale : 0) for i < n, element i decided by word offset + i / repeat
// of the stream from block first_block on (repeat 1: dropout of single values; the width of
// a token's embedding: word dropout). One thread per 16-word block of the stream.
KERNEL dropout(unsigned long long n, unsigned long long repeat, const float* x, float* out,
               unsigned int k0,
               unsigned int k1, unsigned int k2, unsigned int k3, unsigned int k4,
               unsigned int k5, unsigned int k6, unsigned int k7, unsigned long long stream,
               unsigned long long first_block, unsigned int offset, float threshold,
               float scale) {
    unsigned int key[8] = {k0, k1, k2, k3, k4, k5, k6, k7};
    unsigned long long decisions = n / repeat;
    unsigned long long blocks = (offset + decisions + 15) / 16;
    for (unsigned long long b = GLOBAL_INDEX; b < blocks; b += GLOBAL_STRIDE) {
        unsigned int words[16];
        chacha20_block(key, first_block + b, stream, words);
        for (unsigned int w = 0; w < 16; w++) {
            // Decision d reads word offset + d of the stream: block b's word w.
            unsigned long long pos = b * 16 + w;
            if (pos < offset || pos - offset >= decisions) continue;
            unsigned long long d = pos - offset;
            float m = (float)(words[w] >> 8) < threshold ? scale : 0.0f;
            for (unsigned long long i = d * repeat; i < (d + 1) * repeat; i++) out[i] = x[i] * m;
        }
    }
}
