/* The batch-graph arithmetic of the distillation terms: a symmetric Gram product, and the
 * (B, B) part of one GKD or RKD-D layer term (its value and its gradient with respect to
 * the student's Gram matrix) in one call each.
 *
 * Gram: G = X X^T of B rows of F features. Only the tiles on and above the diagonal are
 * computed (about half of a general product's multiply-adds) and the result is written to
 * both halves, so it is exactly symmetric. The features go in blocks of KC; each block
 * of rows is packed into panels of PANEL rows, interleaved by vector, so the inner loop
 * streams two panels (2 x 20 KB: inside a 48 KB L1 cache, from L2 with a 32 KB one, where
 * KC = 512 and 2048 measured no faster on the AMD EPYC VM) with two pointers and keeps a
 * PANEL x PANEL tile of vector accumulators in registers. Each block's tile sums are added
 * in double precision; the blocks are split over OpenMP threads (torch's own libgomp),
 * each with its own partial Gram, added in thread order (no dependence on scheduling) by
 * all the threads, each writing the rows of every n-th panel.
 *
 * Scaled product: alpha S X for the student's gradient (see its section below).
 *
 * Layer terms: everything after the Gram products, on (B, B) matrices in double precision:
 * the teacher's graph (and its k-NN mask), the student's, the squared (GKD) or Huber
 * (RKD-D) residual, and the backward pass to S = dL/dG_s + (dL/dG_s)^T, from which the
 * caller gets the student's gradient as one product S X. The definitions are those of
 * geokd/graphs (kernels.py, normalize.py, masks.py) and geokd/losses (gkd.py, rkd.py).
 *
 * Built by geokd/native/build.py; the ctypes signatures are in geokd/native/graphs.py.
 * Return codes: 0 done; -1 could not allocate scratch memory; 1 the squared row norms are
 * out of the dtype's safe range (or not finite), which the caller hands to its generic
 * path (it rescales, or names the layer of a NaN/Inf).
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#ifndef PANEL
#define PANEL 5   /* 25 accumulators + 5 row vectors + 1 = 31 of the 32 AVX-512 registers */
#endif
#ifndef KC
#define KC 1024   /* features per block: a panel is 5 x 4 KB (float32) */
#endif
/* The Gram's packing prefetches the block of the row this many rows ahead: each row's
 * block is one 4 KB page, where the hardware prefetchers stop, so rows read from memory
 * (features written long before, as in a training step) would each start with a run of
 * cache misses. Measured on the AMD EPYC VM, 2 threads, 128 x 16,384 / 8,192 / 4,096
 * rows from memory: 1.79 / 0.87 / 0.45 ms against 1.85 / 0.91 / 0.48 ms without (rows in
 * cache: unchanged); 4, 8 or 16 rows ahead were no better. */
#ifndef PACK_AHEAD
#define PACK_AHEAD 2
#endif
/* Below this many features per thread, the fork/join costs more than the work it splits. */
#define FEATURES_PER_THREAD 1024
#define INLINE static inline __attribute__((always_inline))

/* Growing per-thread scratch buffers, one per slot: malloc of a few hundred KB per call
 * would take fresh pages from the kernel each time (glibc maps such sizes). Never freed.
 * Slot 0 is the calling thread's scratch of each kernel; the scaled product's threads
 * pack their panels in slot 1 (the calling thread is one of them, its slot 0 holding S). */
enum { SCRATCH_SLOTS = 2 };
static void *scratch_slot(int slot, size_t bytes) {
    static __thread void *buffer[SCRATCH_SLOTS];
    static __thread size_t capacity[SCRATCH_SLOTS];
    if (bytes > capacity[slot]) {
        size_t want = (bytes + 4095) / 4096 * 4096;
        void *fresh = aligned_alloc(64, want);
        if (!fresh) return NULL;
        free(buffer[slot]);
        buffer[slot] = fresh;
        capacity[slot] = want;
    }
    return buffer[slot];
}

static void *thread_scratch(size_t bytes) { return scratch_slot(0, bytes); }

/* Prefetches (to L2) part of the next panel of rows while the current one is computed:
 * lines [*issued, *issued + per_step) of `rows` row segments of `line_count` cache lines
 * each, the segment of row r starting at base + r * row_bytes. In the scaled product the
 * rows come from memory (the student's features, written long before the backward); its
 * 128 KB panels leave room in L2 for the next one (4% faster on cold 128 x 8,192 rows).
 * The Gram's 520 KB blocks do not: prefetching there evicted the packed block. */
INLINE void prefetch_rows(const char *base, int64_t row_bytes, int64_t line_count, int64_t rows,
                          int64_t per_step, int64_t *issued) {
    int64_t end = *issued + per_step, total = rows * line_count;
    for (int64_t at = *issued; at < end && at < total; at++)
        __builtin_prefetch(base + (at / line_count) * row_bytes + (at % line_count) * 64, 0, 2);
    *issued = end;
}

/* ---------------------------------------------------------------- Gram product ---- */

INLINE double hsum_f32(float __attribute__((vector_size(64))) v) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return ((double)c[0] + c[1]) + ((double)c[2] + c[3]);
}

INLINE double hsum_f64(double __attribute__((vector_size(64))) v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/* Panel p of a packed block holds rows p*PANEL.. (zeros past the last row), as nv vectors
 * of each row in turn: element l of vector v of row r is at ((p*nv + v)*PANEL + r)*VL + l.
 * Features past F are zeros, so the tile loop has no tail. */
#define DEFINE_GRAM(T, SUF, VL)                                                                     \
    typedef T vec_##SUF __attribute__((vector_size(64)));                                          \
    typedef T uvec_##SUF __attribute__((vector_size(64), aligned(sizeof(T))));                     \
                                                                                                    \
    static void pack_##SUF(const T *x, int64_t ld, int64_t b, int64_t f, int64_t k0, int64_t nv,   \
                           int64_t panels, T *restrict buf) {                                      \
        for (int64_t p = 0; p < panels; p++)                                                       \
            for (int r = 0; r < PANEL; r++) {                                                      \
                int64_t i = p * PANEL + r;                                                         \
                T *dst = buf + (p * nv * PANEL + r) * VL;                                          \
                const T *src = i < b ? x + i * ld + k0 : x;                                        \
                int64_t left = f - k0;                                                             \
                if (i + PACK_AHEAD < b)                                                            \
                    for (int64_t at = 0; at < nv * VL * (int64_t)sizeof(T); at += 64)              \
                        __builtin_prefetch((const char *)(x + (i + PACK_AHEAD) * ld + k0) + at, 0, 2); \
                for (int64_t v = 0; v < nv; v++, dst += PANEL * VL) {                              \
                    if (i < b && (v + 1) * VL <= left) {                                           \
                        *(vec_##SUF *)dst = *(const uvec_##SUF *)(src + v * VL);                   \
                    } else {                                                                       \
                        vec_##SUF t = {0};                                                         \
                        for (int64_t l = 0; i < b && v * VL + l < left; l++) t[l] = src[v * VL + l]; \
                        *(vec_##SUF *)dst = t;                                                     \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
    }                                                                                              \
                                                                                                    \
    /* acc[r * PANEL + c] += <row r of panel a, row c of panel q> over the block. */               \
    INLINE void tile_##SUF(const T *restrict a, const T *restrict q, int64_t nv, double *acc) {   \
        vec_##SUF s[PANEL][PANEL];                                                                 \
        for (int r = 0; r < PANEL; r++)                                                            \
            for (int c = 0; c < PANEL; c++) s[r][c] = (vec_##SUF){0};                              \
        for (int64_t v = 0; v < nv; v++, a += PANEL * VL, q += PANEL * VL) {                       \
            vec_##SUF xa[PANEL];                                                                   \
            _Pragma("GCC unroll 8") for (int r = 0; r < PANEL; r++) xa[r] = *(const vec_##SUF *)(a + r * VL); \
            _Pragma("GCC unroll 8") for (int c = 0; c < PANEL; c++) {                              \
                vec_##SUF xq = *(const vec_##SUF *)(q + c * VL);                                   \
                _Pragma("GCC unroll 8") for (int r = 0; r < PANEL; r++) s[r][c] += xa[r] * xq;     \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < PANEL; r++)                                                            \
            for (int c = 0; c < PANEL; c++) acc[r * PANEL + c] += hsum_##SUF(s[r][c]);             \
    }                                                                                              \
                                                                                                    \
    int geokd_gram_##SUF(const T *x, int64_t b, int64_t f, int64_t ld, T *out, int threads) {      \
        int64_t nv_all = (f + VL - 1) / VL, panels = (b + PANEL - 1) / PANEL;                      \
        /* Tile sums of the panel pairs (p, q >= p) only, tile (p, q) at p * panels -           \
         * p (p - 1) / 2 + q - p: half the scratch to clear of all panel pairs. */                \
        int64_t tile_values = panels * (panels + 1) / 2 * PANEL * PANEL;                           \
        int nt = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);                \
        while (nt > 1 && f < (int64_t)FEATURES_PER_THREAD * nt) nt--;                              \
        double *partial[MAX_THREADS] = {0};                                                        \
        int failed = 0;                                                                            \
        _Pragma("omp parallel num_threads(nt)")                                                    \
        {                                                                                          \
            int t = omp_get_thread_num(), n = omp_get_num_threads();                               \
            size_t pack_bytes = (size_t)panels * PANEL * KC * sizeof(T);                           \
            char *mem = thread_scratch(pack_bytes + (size_t)tile_values * sizeof(double));         \
            if (!mem) {                                                                            \
                _Pragma("omp atomic write") failed = 1;                                            \
            } else {                                                                               \
                T *buf = (T *)mem;                                                                 \
                double *acc = (double *)(mem + pack_bytes);                                        \
                memset(acc, 0, (size_t)tile_values * sizeof(double));                              \
                partial[t] = acc;                                                                  \
                int64_t v0 = nv_all * t / n, v1 = nv_all * (t + 1) / n;                            \
                for (int64_t vb = v0; vb < v1; vb += KC / VL) {                                    \
                    int64_t nv = vb + KC / VL < v1 ? KC / VL : v1 - vb;                            \
                    pack_##SUF(x, ld, b, f, vb * VL, nv, panels, buf);                             \
                    double *tile = acc;                                                            \
                    for (int64_t p = 0; p < panels; p++)                                           \
                        for (int64_t q = p; q < panels; q++, tile += PANEL * PANEL)                \
                            tile_##SUF(buf + p * nv * PANEL * VL, buf + q * nv * PANEL * VL, nv, tile); \
                }                                                                                  \
            }                                                                                      \
            /* The threads' sums, added in thread order, each thread writing the rows of every \
             * n-th panel (both halves of G: it is exactly symmetric). */                         \
            _Pragma("omp barrier")                                                                 \
            int done;                                                                              \
            _Pragma("omp atomic read") done = failed;                                              \
            if (!done)                                                                             \
                for (int64_t p = t; p < panels; p += n) {                                          \
                    int64_t at = (p * panels - p * (p - 1) / 2) * PANEL * PANEL;                   \
                    for (int64_t q = p; q < panels; q++, at += PANEL * PANEL)                      \
                        for (int r = 0; r < PANEL; r++)                                            \
                            for (int c = 0; c < PANEL; c++) {                                      \
                                int64_t i = p * PANEL + r, j = q * PANEL + c;                      \
                                if (i >= b || j >= b || j < i) continue;                           \
                                double s = 0.0;                                                    \
                                for (int u = 0; u < n; u++) s += partial[u][at + r * PANEL + c];   \
                                out[i * b + j] = out[j * b + i] = (T)s;                            \
                            }                                                                      \
                }                                                                                  \
        }                                                                                          \
        return failed ? -1 : 0;                                                                    \
    }

DEFINE_GRAM(float, f32, 16)
DEFINE_GRAM(double, f64, 8)

/* ------------------------------------------------- the student's gradient ---- */

/* out = alpha S X for a (B, B) matrix S and (B, F) rows X: a layer term's gradient with
 * respect to the student's rows, from S = dL/dG + dL/dG^T. A register-blocked product:
 * S is packed once, scaled by alpha, into blocks of MR rows (column k of a block is MR
 * consecutive values); X goes in panels of NR_PANEL columns, packed as slabs of NR
 * columns (B x NR contiguous: 16 KB in float32 at B = 128, inside the L1 cache, where
 * the rows of X lie a whole row stride apart and would fall into the same cache sets);
 * each (MR, NR) block of the output is MR x 2 vector accumulators updated by one
 * broadcast of S and two vectors of X per k. The panels are split over OpenMP threads;
 * each output value is one sum over k in order, whatever the thread count. */
#ifndef MR
#define MR 12     /* 24 accumulators + 2 row vectors + 1 broadcast of the 32 registers */
#endif
#define NR_PANEL 256  /* columns per packed panel: B x 1 KB rows, read as whole cache lines */

/* The output goes to memory by non-temporal stores where they exist (AVX-512) and the
 * destination is a whole aligned vector: in a training step autograd reads it only after
 * the backward of the blocks above the sensing point, long out of the caches by then, so
 * a cached store would first read every line of it for nothing. The student's gradient
 * of the WRN layer1 / layer2 terms in a step took 2.2-2.5 ms against 2.8 ms (AMD EPYC
 * VM). The stores are fenced before the threads join. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define STREAM_STORES 1
#define STREAM_f32(p, v) _mm512_stream_ps((p), (__m512)(v))
#define STREAM_f64(p, v) _mm512_stream_pd((p), (__m512d)(v))
#define STREAM_FENCE() _mm_sfence()
#else
#define STREAM_STORES 0
#define STREAM_f32(p, v) (*(vec_f32 *)(p) = (v))
#define STREAM_f64(p, v) (*(vec_f64 *)(p) = (v))
#define STREAM_FENCE() ((void)0)
#endif

#define DEFINE_SCALED_PRODUCT(T, SUF, VL)                                                           \
    int geokd_scaled_product_##SUF(const T *s, const T *x, int64_t b, int64_t f, int64_t ldx,      \
                                   double alpha, T *out, int64_t ldo, int threads) {                \
        enum { NR = 2 * VL };                                                                      \
        int64_t blocks = (b + MR - 1) / MR, panels = (f + NR_PANEL - 1) / NR_PANEL;                \
        T *sp = thread_scratch((size_t)blocks * MR * b * sizeof(T));                               \
        if (!sp) return -1;                                                                        \
        for (int64_t blk = 0; blk < blocks; blk++)                                                 \
            for (int64_t k = 0; k < b; k++)                                                        \
                for (int r = 0; r < MR; r++) {                                                     \
                    int64_t i = blk * MR + r;                                                      \
                    sp[(blk * b + k) * MR + r] = i < b ? (T)(alpha * s[i * b + k]) : (T)0;         \
                }                                                                                  \
        int nt = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);                \
        while (nt > 1 && panels < nt) nt--; /* a panel is B x 256 x 2 FMAs: worth a thread */      \
        int failed = 0;                                                                            \
        _Pragma("omp parallel num_threads(nt)")                                                    \
        {                                                                                          \
            int t = omp_get_thread_num(), n = omp_get_num_threads();                               \
            T *xp = scratch_slot(1, (size_t)b * NR_PANEL * sizeof(T));                             \
            if (!xp) {                                                                             \
                _Pragma("omp atomic write") failed = 1;                                            \
            } else {                                                                               \
                int64_t last = panels * (t + 1) / n;                                               \
                for (int64_t pn = panels * t / n; pn < last; pn++) {                               \
                    int64_t c0 = pn * NR_PANEL, width = f - c0 < NR_PANEL ? f - c0 : NR_PANEL;      \
                    int64_t slabs = (width + NR - 1) / NR;                                         \
                    int64_t next_width = pn + 1 < last ? f - c0 - NR_PANEL : 0;                    \
                    next_width = next_width < NR_PANEL ? next_width : NR_PANEL;                    \
                    int64_t lines = (next_width * (int64_t)sizeof(T) + 63) / 64, issued = 0;       \
                    int64_t per_block = (b * lines + slabs * blocks - 1) / (slabs * blocks);       \
                    /* slab q of the panel: xp[(q * b + k) * NR + c] = x[k, c0 + q * NR + c] */    \
                    for (int64_t k = 0; k < b; k++) {                                              \
                        const T *src = x + k * ldx + c0;                                           \
                        for (int64_t q = 0; q < slabs; q++) {                                      \
                            T *dst = xp + (q * b + k) * NR;                                        \
                            if ((q + 1) * NR <= width) {                                           \
                                *(vec_##SUF *)dst = *(const uvec_##SUF *)(src + q * NR);           \
                                *(vec_##SUF *)(dst + VL) = *(const uvec_##SUF *)(src + q * NR + VL); \
                            } else {                                                               \
                                for (int c = 0; c < NR; c++)                                       \
                                    dst[c] = q * NR + c < width ? src[q * NR + c] : (T)0;          \
                            }                                                                      \
                        }                                                                          \
                    }                                                                              \
                    for (int64_t q = 0; q < slabs; q++) {                                          \
                        const T *slab = xp + q * b * NR;                                           \
                        int64_t col = c0 + q * NR, cols = f - col < NR ? f - col : NR;             \
                        for (int64_t blk = 0; blk < blocks; blk++) {                               \
                            const T *a = sp + blk * b * MR;                                        \
                            vec_##SUF acc[MR][2];                                                  \
                            for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = (vec_##SUF){0};   \
                            for (int64_t k = 0; k < b; k++) {                                      \
                                vec_##SUF x0 = *(const vec_##SUF *)(slab + k * NR);                \
                                vec_##SUF x1 = *(const vec_##SUF *)(slab + k * NR + VL);           \
                                _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++) {            \
                                    T v = a[k * MR + r];                                           \
                                    acc[r][0] += x0 * v;                                           \
                                    acc[r][1] += x1 * v;                                           \
                                }                                                                  \
                            }                                                                      \
                            for (int r = 0; r < MR && blk * MR + r < b; r++) {                     \
                                T *dst = out + (blk * MR + r) * ldo + col;                         \
                                if (cols == NR && STREAM_STORES && ((uintptr_t)dst & 63) == 0) {   \
                                    STREAM_##SUF(dst, acc[r][0]);                                  \
                                    STREAM_##SUF(dst + VL, acc[r][1]);                             \
                                } else if (cols == NR) {                                           \
                                    *(uvec_##SUF *)dst = acc[r][0];                                \
                                    *(uvec_##SUF *)(dst + VL) = acc[r][1];                         \
                                } else {                                                           \
                                    for (int c = 0; c < cols; c++)                                 \
                                        dst[c] = c < VL ? acc[r][0][c] : acc[r][1][c - VL];        \
                                }                                                                  \
                            }                                                                      \
                            if (next_width > 0)                                                    \
                                prefetch_rows((const char *)(x + c0 + NR_PANEL), ldx * (int64_t)sizeof(T), \
                                              lines, b, per_block, &issued);                       \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
                STREAM_FENCE();                                                                    \
            }                                                                                      \
        }                                                                                          \
        return failed ? -1 : 0;                                                                    \
    }

DEFINE_SCALED_PRODUCT(float, f32, 16)
DEFINE_SCALED_PRODUCT(double, f64, 8)

/* ------------------------------------------------------------- layer terms ---- */

/* Row operations on (B, B) float64 matrices. The sums keep 8 partial accumulators, which
 * the compiler turns into vector lanes (one running sum would be a serial chain of
 * dependent additions, ~4x slower on these short rows). */
INLINE double dot(const double *restrict a, const double *restrict b, int64_t n) {
    double part[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) part[l] += a[j + l] * b[j + l];
    double s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

INLINE double sum(const double *restrict a, int64_t n) {
    double part[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) part[l] += a[j + l];
    double s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; j < n; j++) s += a[j];
    return s;
}

/* s = m + m^T (in place on s, which may be m), in 16 x 16 blocks: walking whole columns,
 * a row stride of B = 128 doubles (1 KB) put every 16th row in the same cache sets, and
 * this loop was 40% of a GKD layer call (75 us at B = 128, AMD EPYC VM). */
static void add_transpose(const double *m, int64_t b, double *s) {
    enum { TB = 16 };
    for (int64_t i0 = 0; i0 < b; i0 += TB)
        for (int64_t j0 = i0; j0 < b; j0 += TB) {
            int64_t i1 = i0 + TB < b ? i0 + TB : b, j1 = j0 + TB < b ? j0 + TB : b;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0 > i ? j0 : i; j < j1; j++) {
                    double v = m[i * b + j] + m[j * b + i];
                    s[i * b + j] = s[j * b + i] = v;
                }
        }
}

/* Whether squared row norms lost nothing to over- or underflow, as
 * geokd.graphs._numerics.squared_norms_in_range: their sum at most max/4 (no squared
 * distance overflows) and, with `each`, the smallest above the dtype's tiny (without
 * it, the sum). NaN fails both. */
static int norms_in_range(const double *g, int64_t b, int each, double max, double tiny) {
    double total = 0.0, least = INFINITY;
    for (int64_t i = 0; i < b; i++) {
        total += g[i * b + i];
        least = fmin(least, g[i * b + i]);
    }
    if (!(total <= max / 4)) return 0;
    return (each ? least : total) > tiny;
}

enum { NORM_NONE = 0, NORM_SYM = 1, NORM_RW = 2 };
enum { TASK_ALL = 0, TASK_INTRA = 1, TASK_INTER = 2 };

/* cos = G o r r^T, zero diagonal, r = diag(G)^-1/2 (0 for a zero row); then the
 * normalization by the degrees of cos: graph = cos o f f^T (sym, f = deg^-1/2) or
 * f o cos (rw, f = deg^-1); f = 1 for none. */
static void cosine_graph(const double *g, int64_t b, int mode, double *r, double *cos, double *f, double *graph) {
    for (int64_t i = 0; i < b; i++) r[i] = g[i * b + i] > 0 ? 1.0 / sqrt(g[i * b + i]) : 0.0;
    for (int64_t i = 0; i < b; i++) {
        const double *gi = g + i * b;
        double *ci = cos + i * b, ri = r[i];
        for (int64_t j = 0; j < b; j++) ci[j] = gi[j] * (ri * r[j]);
        ci[i] = 0.0;
        double deg = sum(ci, b);
        /* deg^-1/2 or deg^-1 (0 for an isolated node), not pow(): a library call per row */
        f[i] = mode == NORM_SYM  ? (deg > 0 ? 1.0 / sqrt(deg) : 0.0)
             : mode == NORM_RW   ? (deg > 0 ? 1.0 / deg : 0.0)
                                 : 1.0;
    }
    for (int64_t i = 0; i < b; i++) {
        const double *ci = cos + i * b;
        double *ai = graph + i * b, fi = f[i];
        if (mode == NORM_SYM)
            for (int64_t j = 0; j < b; j++) ai[j] = ci[j] * (fi * f[j]);
        else if (mode == NORM_RW)
            for (int64_t j = 0; j < b; j++) ai[j] = fi * ci[j];
        else
            memcpy(ai, ci, (size_t)b * sizeof(double));
    }
}

/* Union-symmetrized k-NN mask of `a`: row i keeps its k largest off-diagonal entries, ties
 * to the lower column (as geokd.graphs.masks.knn_mask), keep = min(1, K + K^T). */
static void knn_keep(const double *a, int64_t b, int64_t k, unsigned char *keep, int64_t *top) {
    memset(keep, 0, (size_t)(b * b));
    for (int64_t i = 0; i < b; i++) {
        const double *ai = a + i * b;
        int64_t n = 0;  /* top[0..n): decreasing value, then increasing column */
        for (int64_t j = 0; j < b; j++) {
            if (j == i) continue;
            double v = ai[j];
            if (n == k && !(v > ai[top[n - 1]])) continue;
            int64_t at = n < k ? n++ : k - 1;
            while (at > 0 && v > ai[top[at - 1]]) {
                top[at] = top[at - 1];
                at--;
            }
            top[at] = j;
        }
        for (int64_t m = 0; m < n; m++) keep[i * b + top[m]] = keep[top[m] * b + i] = 1;
    }
}

/* The cosine's backward, from dcos (zero diagonal) to S = dG + dG^T, with
 * dG = dcos o r r^T - diag(0.5 r^3 o dr) and dr_i = sum_j (dcos_ij + dcos_ji) G_ij r_j.
 * The dcos_ji half of dr is gathered by rows (G is symmetric) into `column`; `t` is a
 * scratch row. */
static void cosine_backward(const double *g, const double *r, const double *dcos, int64_t b, double *s,
                            double *t, double *column) {
    for (int64_t j = 0; j < b; j++) column[j] = 0.0;
    for (int64_t i = 0; i < b; i++) {
        const double *gi = g + i * b, *di = dcos + i * b;
        double *si = s + i * b, ri = r[i];
        for (int64_t j = 0; j < b; j++) t[j] = di[j] * gi[j];
        double dr_row = dot(t, r, b);
        for (int64_t j = 0; j < b; j++) column[j] += t[j] * ri;
        for (int64_t j = 0; j < b; j++) si[j] = di[j] * (ri * r[j]);
        si[i] -= 0.5 * dr_row * ri * ri * ri;
    }
    for (int64_t i = 0; i < b; i++) s[i * b + i] -= 0.5 * column[i] * r[i] * r[i] * r[i];
    add_transpose(s, b, s);
}

/* GKD: loss = sum_ij (A_T - N(cos(G_s)) o M)_ij^2 with A_T = N(cos(G_t)) o M, M the task
 * mask times the teacher's k-NN mask (k = 0: none); s = S. Scratch: GKD_SCRATCH(b) bytes. */
#define GKD_SCRATCH(b) ((6 * (size_t)(b) * (b) + 8 * (size_t)(b)) * sizeof(double) + (size_t)(b) * (b))
static int gkd_core(const double *gt, const double *gs, int64_t b, int mode, const int64_t *labels, int task,
                    int64_t k, double max, double tiny, double *loss, double *s, char *scratch) {
    if (!norms_in_range(gt, b, 1, max, tiny) || !norms_in_range(gs, b, 1, max, tiny)) return 1;
    size_t bb = (size_t)(b * b);
    double *cos_t = (double *)scratch, *target = cos_t + bb, *cos_s = target + bb, *graph_s = cos_s + bb;
    double *mask = graph_s + bb, *dcos = mask + bb;
    double *r_t = dcos + bb, *f_t = r_t + b, *r_s = f_t + b, *f_s = r_s + b, *dfactor = f_s + b;
    double *row = dfactor + b, *column = row + b;
    int64_t *top = (int64_t *)(column + b);
    unsigned char *keep = (unsigned char *)(top + b);

    cosine_graph(gt, b, mode, r_t, cos_t, f_t, target);
    if (task == TASK_ALL) {
        for (size_t at = 0; at < bb; at++) mask[at] = 1.0;
    } else {
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++)
                mask[i * b + j] = (labels[i] == labels[j]) == (task == TASK_INTRA) ? 1.0 : 0.0;
        for (size_t at = 0; at < bb; at++) target[at] *= mask[at];
    }
    if (k > 0) {
        knn_keep(target, b, k, keep, top);
        for (size_t at = 0; at < bb; at++) {
            mask[at] = keep[at] ? mask[at] : 0.0;
            target[at] = keep[at] ? target[at] : 0.0;
        }
    }

    cosine_graph(gs, b, mode, r_s, cos_s, f_s, graph_s);
    double *dgraph = graph_s;  /* reused: dL/dA_s = -2 (A_T - A_s o M) o M */
    double *squares = dcos;    /* reused before dcos is written */
    for (size_t at = 0; at < bb; at++) {
        double residual = target[at] - graph_s[at] * mask[at];
        squares[at] = residual * residual;
        dgraph[at] = -2.0 * residual * mask[at];
    }
    *loss = sum(squares, (int64_t)bb);

    /* Through the normalization: graph = f(deg) o cos with deg = cos 1. */
    if (mode == NORM_SYM) {
        /* d f_i = sum_j w_ij f_j + sum_j w_ji f_j, w = dA o cos; the second half by rows */
        for (int64_t j = 0; j < b; j++) column[j] = 0.0;
        for (int64_t i = 0; i < b; i++) {
            const double *dai = dgraph + i * b, *ci = cos_s + i * b;
            for (int64_t j = 0; j < b; j++) row[j] = dai[j] * ci[j];
            dfactor[i] = dot(row, f_s, b);
            for (int64_t j = 0; j < b; j++) column[j] += row[j] * f_s[i];
        }
        for (int64_t i = 0; i < b; i++) {
            const double *dai = dgraph + i * b;
            double *di = dcos + i * b, fi = f_s[i];
            double shift = -0.5 * (dfactor[i] + column[i]) * fi * fi * fi;
            for (int64_t j = 0; j < b; j++) di[j] = dai[j] * (fi * f_s[j]) + shift;
        }
    } else if (mode == NORM_RW) {
        for (int64_t i = 0; i < b; i++) {
            const double *dai = dgraph + i * b;
            double *di = dcos + i * b, fi = f_s[i];
            double shift = -dot(dai, cos_s + i * b, b) * fi * fi;
            for (int64_t j = 0; j < b; j++) di[j] = fi * dai[j] + shift;
        }
    } else {
        memcpy(dcos, dgraph, bb * sizeof(double));
    }
    for (int64_t i = 0; i < b; i++) dcos[i * b + i] = 0.0;
    cosine_backward(gs, r_s, dcos, b, s, row, column);
    return 0;
}

/* Distances from a Gram matrix, divided by their off-diagonal mean (0 if that is 0):
 * d_ij = sqrt(max(G_ii + G_jj - 2 G_ij, 0)), zero diagonal. Returns the mean; `n` is
 * scratch for the diagonal. */
static double normalized_distances(const double *g, int64_t b, double *dist, double *psi, double *n) {
    for (int64_t i = 0; i < b; i++) n[i] = g[i * b + i];
    for (int64_t i = 0; i < b; i++) {
        const double *gi = g + i * b;
        double *di = dist + i * b, ni = n[i];
        for (int64_t j = 0; j < b; j++) {
            /* not fmax(): it stays a library call (NaN rules), which keeps the loop scalar */
            double sq = ni + n[j] - 2.0 * gi[j];
            di[j] = sqrt(sq > 0 ? sq : 0.0);
        }
        di[i] = 0.0;
    }
    size_t bb = (size_t)(b * b);
    double mu = sum(dist, (int64_t)bb) / (double)(b * (b - 1));
    for (size_t at = 0; at < bb; at++) psi[at] = mu > 0 ? dist[at] / mu : 0.0;
    return mu;
}

/* RKD-D: loss = sum_ij huber(psi_s - psi_t) / count (count = b^2 with the diagonal, else
 * b(b-1)), Huber with beta 1; s = S. Scratch: RKD_SCRATCH(b) bytes. */
#define RKD_SCRATCH(b) ((5 * (size_t)(b) * (b) + 2 * (size_t)(b)) * sizeof(double))
static int rkd_core(const double *gt, const double *gs, int64_t b, int include_diagonal, double max, double tiny,
                    double *loss, double *s, char *scratch) {
    if (!norms_in_range(gt, b, 0, max, tiny) || !norms_in_range(gs, b, 0, max, tiny)) return 1;
    size_t bb = (size_t)(b * b);
    double *dist_t = (double *)scratch, *psi_t = dist_t + bb, *dist_s = psi_t + bb, *psi_s = dist_s + bb;
    double *huber = psi_s + bb, *n = huber + bb, *diag = n + b;
    normalized_distances(gt, b, dist_t, psi_t, n);
    double mu = normalized_distances(gs, b, dist_s, psi_s, n);
    double count = include_diagonal ? (double)(b * b) : (double)(b * (b - 1));
    double *dpsi = psi_t;  /* reused once read */
    for (size_t at = 0; at < bb; at++) {
        double d = psi_s[at] - psi_t[at], a = fabs(d);
        huber[at] = a < 1.0 ? 0.5 * d * d : a - 0.5;
        dpsi[at] = (d > 1.0 ? 1.0 : d < -1.0 ? -1.0 : d) / count;
    }
    *loss = sum(huber, (int64_t)bb) / count;
    if (!(mu > 0)) {  /* psi_s = 0 whatever the rows: no gradient */
        memset(s, 0, bb * sizeof(double));
        return 0;
    }
    /* psi = dist / mu with mu = sum(dist) / (b (b - 1)): dL/dmu = -sum(dpsi o dist) / mu^2 */
    double ddist_mean = -dot(dpsi, dist_s, (int64_t)bb) / (mu * mu) / (double)(b * (b - 1));
    double *dsq = dist_t;  /* reused: dL/d(squared distance), zero diagonal */
    for (int64_t i = 0; i < b; i++) {
        const double *pi = dpsi + i * b, *di = dist_s + i * b;
        double *qi = dsq + i * b;
        for (int64_t j = 0; j < b; j++) qi[j] = di[j] > 0 ? (pi[j] / mu + ddist_mean) / (2.0 * di[j]) : 0.0;
        qi[i] = 0.0;
    }
    /* sq_ij = G_ii + G_jj - 2 G_ij: dG_ij = -2 dsq_ij, dG_ii = sum_j dsq_ij + dsq_ji */
    add_transpose(dsq, b, dsq);
    for (int64_t i = 0; i < b; i++) {
        const double *qi = dsq + i * b;
        double *si = s + i * b;
        diag[i] = sum(qi, b);
        for (int64_t j = 0; j < b; j++) si[j] = -2.0 * qi[j];
    }
    for (int64_t i = 0; i < b; i++) s[i * b + i] = 2.0 * diag[i];
    return 0;
}

/* The exported layer terms: Grams in T in, the loss in double and S in T out. */
#define DEFINE_TERMS(T, SUF, MAX, TINY)                                                             \
    static char *grams_as_double_##SUF(const T *gram_t, const T *gram_s, int64_t b, size_t extra) { \
        size_t bb = (size_t)(b * b);                                                               \
        double *mem = thread_scratch(3 * bb * sizeof(double) + extra);                             \
        if (mem)                                                                                   \
            for (size_t at = 0; at < bb; at++) {                                                   \
                mem[at] = gram_t[at];                                                              \
                mem[bb + at] = gram_s[at];                                                         \
            }                                                                                      \
        return (char *)mem;                                                                        \
    }                                                                                              \
                                                                                                    \
    int geokd_gkd_layer_##SUF(const T *gram_t, const T *gram_s, int64_t b, int normalization,      \
                              const int64_t *labels, int task, int64_t k, double *loss, T *s) {     \
        size_t bb = (size_t)(b * b);                                                               \
        double *gt = (double *)grams_as_double_##SUF(gram_t, gram_s, b, GKD_SCRATCH(b));           \
        if (!gt) return -1;                                                                        \
        double *gs = gt + bb, *out = gs + bb;                                                      \
        int status = gkd_core(gt, gs, b, normalization, labels, task, k, MAX, TINY, loss, out,     \
                              (char *)(out + bb));                                                 \
        if (status == 0)                                                                           \
            for (size_t at = 0; at < bb; at++) s[at] = (T)out[at];                                 \
        return status;                                                                             \
    }                                                                                              \
                                                                                                    \
    int geokd_rkd_layer_##SUF(const T *gram_t, const T *gram_s, int64_t b, int include_diagonal,   \
                              double *loss, T *s) {                                                 \
        size_t bb = (size_t)(b * b);                                                               \
        double *gt = (double *)grams_as_double_##SUF(gram_t, gram_s, b, RKD_SCRATCH(b));           \
        if (!gt) return -1;                                                                        \
        double *gs = gt + bb, *out = gs + bb;                                                      \
        int status = rkd_core(gt, gs, b, include_diagonal, MAX, TINY, loss, out, (char *)(out + bb)); \
        if (status == 0)                                                                           \
            for (size_t at = 0; at < bb; at++) s[at] = (T)out[at];                                 \
        return status;                                                                             \
    }

DEFINE_TERMS(float, f32, FLT_MAX, FLT_MIN)
DEFINE_TERMS(double, f64, DBL_MAX, DBL_MIN)
