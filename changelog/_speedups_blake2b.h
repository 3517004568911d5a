/* blake2b (RFC 7693), unkeyed, one shot, 16-byte digest: hashlib.blake2b(digest_size=16), the
 * event id of changelog.pipeline.mutation.event_id. Included by _speedups.c only. */
#ifndef CHANGELOG_SPEEDUPS_BLAKE2B_H
#define CHANGELOG_SPEEDUPS_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>


static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[10][16] = { /* rounds 10 and 11 reuse rows 0 and 1 */
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64_le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define B2_G(a, b, c, d, x, y) do { \
        a = a + b + (x); d = rotr64(d ^ a, 32); c = c + d; b = rotr64(b ^ c, 24); \
        a = a + b + (y); d = rotr64(d ^ a, 16); c = c + d; b = rotr64(b ^ c, 63); \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64_le(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= counter; /* messages here are far below 2**64 bytes: the high word stays 0 */
    if (last)
        v[14] = ~v[14];
    /* Unrolled: the message schedule becomes constant offsets (about twice as fast at -O2). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 12
#endif
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r % 10];
        B2_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        B2_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        B2_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        B2_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        B2_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        B2_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        B2_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        B2_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* The 32 lowercase hex digits of blake2b-128(msg). */
static void b2_hex16(const uint8_t *msg, size_t len, char out[32])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t h[8];
    uint8_t block[128];
    size_t off = 0;
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 16; /* depth 1, fanout 1, no key, 16-byte digest */
    while (len - off > 128) {
        b2_compress(h, msg + off, (uint64_t)(off + 128), 0);
        off += 128;
    }
    memcpy(block, msg + off, len - off);
    memset(block + (len - off), 0, sizeof block - (len - off));
    b2_compress(h, block, (uint64_t)len, 1);
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
        out[2 * i] = hex[byte >> 4];
        out[2 * i + 1] = hex[byte & 15];
    }
}

#endif
