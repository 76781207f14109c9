/* Batch-norm passes over the dense (rows, width) matrix a channels-last map is in memory.
 *
 * Column k of the matrix is channel k % C: the Python side views an (M, C) map as
 * (M / r, r * C) rows and folds the r columns of each channel itself. The statistics are
 * one read of the map, the normalization one read and one write; the backward is one read
 * of x and dy for its two sums and one more, with a write, for dx.
 *
 * Accuracy: all sums are in double precision. The statistics sum x - s and (x - s)^2 for
 * a shift s per column (a value of that column), so the variance S2/n - (S1/n)^2 loses
 * only about eps_double * (mean - s)^2 / var of its relative accuracy: nothing, in float32
 * terms, for any map a network produces.
 *
 * Speed: columns go in blocks of 64 and then 16, each block's accumulators a constant-size
 * local array the compiler keeps in vector registers; rows are split over OpenMP threads,
 * each with its own partial sums, added in thread order afterwards (the result does not
 * depend on scheduling). Linked against the libgomp torch has loaded, the parallel
 * regions run on ATen's own worker threads instead of competing with them.
 *
 * Built by geokd/native/build.py; the ctypes signatures are in geokd/native/batchnorm.py.
 * Every function returns 0, or -1 if it could not allocate its partial sums.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_THREADS 64
/* Below this many rows per thread, the fork/join costs more than the work it splits. */
#define ROWS_PER_THREAD 1024
#define INLINE static inline __attribute__((always_inline))

static int threads_for(int64_t rows, int requested) {
    int n = requested < 1 ? 1 : (requested > MAX_THREADS ? MAX_THREADS : requested);
    while (n > 1 && rows < (int64_t)ROWS_PER_THREAD * n) n--;
    return n;
}

/* The rows of thread t of nt. */
#define ROW_RANGE(rows, t, nt) int64_t r0 = (rows) * (t) / (nt), r1 = (rows) * ((t) + 1) / (nt)

static void fold(double *restrict out, const double *restrict partial, int threads, int64_t width) {
    for (int t = 0; t < threads; t++)
        for (int64_t k = 0; k < width; k++) out[k] += partial[t * width + k];
}

/* The body of a two-sum column reduction: rows split over threads, each thread's partial
 * sums in its own rows of `partial`, columns in blocks of 64, then 16, then 1 (BLOCK is
 * called with the leading arguments given, then r0, r1, width, k0, bw, acc1, acc2). Needs
 * `rows`, `width` and `threads` in scope; returns from the enclosing function. */
#define COLUMN_SUMS(BLOCK, OUT1, OUT2, ...)                                                          \
    int n = threads_for(rows, threads);                                                             \
    double *partial = calloc((size_t)2 * n * width, sizeof(double));                                 \
    if (!partial) return -1;                                                                         \
    _Pragma("omp parallel num_threads(n)")                                                           \
    {                                                                                                \
        int t = omp_get_thread_num();                                                                \
        ROW_RANGE(rows, t, omp_get_num_threads());                                                   \
        double *a = partial + t * width, *b = partial + (n + t) * width;                             \
        int64_t k0 = 0;                                                                              \
        for (; k0 + 64 <= width; k0 += 64) BLOCK(__VA_ARGS__, r0, r1, width, k0, 64, a, b);          \
        for (; k0 + 16 <= width; k0 += 16) BLOCK(__VA_ARGS__, r0, r1, width, k0, 16, a, b);          \
        for (; k0 < width; k0++) BLOCK(__VA_ARGS__, r0, r1, width, k0, 1, a, b);                     \
    }                                                                                                \
    fold(OUT1, partial, n, width);                                                                   \
    fold(OUT2, partial + (size_t)n * width, n, width);                                               \
    free(partial);                                                                                   \
    return 0;

/* The body of an elementwise pass: rows split over threads, the arguments run for each row
 * index i of the thread's range. Needs `rows`, `width` and `threads` in scope. */
#define PARALLEL_ROWS(...)                                                                           \
    int n = threads_for(rows, threads);                                                             \
    _Pragma("omp parallel num_threads(n)")                                                           \
    {                                                                                                \
        int t = omp_get_thread_num();                                                                \
        ROW_RANGE(rows, t, omp_get_num_threads());                                                   \
        for (int64_t i = r0; i < r1; i++) { __VA_ARGS__ }                                            \
    }                                                                                                \
    return 0;

#define DEFINE(T, SUF)                                                                              \
/* Columns [k0, k0 + bw) of rows [r0, r1): acc1 += x - s, acc2 += (x - s)^2. */                     \
INLINE void stats_block_##SUF(const T *restrict x, const T *restrict s, int64_t r0, int64_t r1,     \
                              int64_t width, int64_t k0, const int bw,                              \
                              double *restrict acc1, double *restrict acc2) {                       \
    double a[64] = {0}, b[64] = {0}, shift[64];                                                     \
    for (int k = 0; k < bw; k++) shift[k] = (double)s[k0 + k];                                      \
    for (int64_t i = r0; i < r1; i++) {                                                             \
        const T *restrict row = x + i * width + k0;                                                 \
        for (int k = 0; k < bw; k++) {                                                              \
            double d = (double)row[k] - shift[k];                                                   \
            a[k] += d;                                                                              \
            b[k] += d * d;                                                                          \
        }                                                                                           \
    }                                                                                               \
    for (int k = 0; k < bw; k++) { acc1[k0 + k] += a[k]; acc2[k0 + k] += b[k]; }                    \
}                                                                                                   \
                                                                                                    \
static int stats_##SUF(const T *restrict x, const T *restrict shift, int64_t rows, int64_t width, \
                         int threads, double *restrict sum, double *restrict sum_sq) {                 \
    COLUMN_SUMS(stats_block_##SUF, sum, sum_sq, x, shift);                                      \
}                                                                                                   \
                                                                                                    \
/* out = (x - mean) * scale + shift */                                                              \
static int normalize_##SUF(const T *restrict x, const T *restrict mean, const T *restrict scale,  \
                             const T *restrict shift, T *restrict out, int64_t rows,                \
                             int64_t width, int threads) {                                          \
    PARALLEL_ROWS(                                                                                  \
        const T *restrict row = x + i * width;                                                      \
        T *restrict o = out + i * width;                                                            \
        for (int64_t k = 0; k < width; k++) o[k] = (row[k] - mean[k]) * scale[k] + shift[k];        \
    )                                                                                               \
}                                                                                                   \
                                                                                                    \
/* Columns [k0, k0 + bw) of rows [r0, r1): acc1 += dy, acc2 += dy * (x - mean). */                  \
INLINE void backward_block_##SUF(const T *restrict x, const T *restrict dy, const T *restrict mean, \
                                 int64_t r0, int64_t r1, int64_t width, int64_t k0, const int bw,   \
                                 double *restrict acc1, double *restrict acc2) {                    \
    double a[64] = {0}, b[64] = {0}, mu[64];                                                        \
    for (int k = 0; k < bw; k++) mu[k] = (double)mean[k0 + k];                                      \
    for (int64_t i = r0; i < r1; i++) {                                                             \
        const T *restrict row = x + i * width + k0;                                                 \
        const T *restrict g = dy + i * width + k0;                                                  \
        for (int k = 0; k < bw; k++) {                                                              \
            double gk = (double)g[k];                                                               \
            a[k] += gk;                                                                             \
            b[k] += gk * ((double)row[k] - mu[k]);                                                  \
        }                                                                                           \
    }                                                                                               \
    for (int k = 0; k < bw; k++) { acc1[k0 + k] += a[k]; acc2[k0 + k] += b[k]; }                    \
}                                                                                                   \
                                                                                                    \
static int backward_sums_##SUF(const T *restrict x, const T *restrict dy, const T *restrict mean, \
                                 int64_t rows, int64_t width, int threads,                          \
                                 double *restrict sum_dy, double *restrict sum_dy_xmu) {    \
    COLUMN_SUMS(backward_block_##SUF, sum_dy, sum_dy_xmu, x, dy, mean);                          \
}                                                                                                   \
                                                                                                    \
/* dx = a * dy + b * (x - mean) + c */                                                              \
static int backward_input_##SUF(const T *restrict x, const T *restrict dy, const T *restrict mean, \
                                  const T *restrict a, const T *restrict b, const T *restrict c,    \
                                  T *restrict dx, int64_t rows, int64_t width, int threads) {       \
    PARALLEL_ROWS(                                                                                  \
        const T *restrict row = x + i * width;                                                      \
        const T *restrict g = dy + i * width;                                                       \
        T *restrict o = dx + i * width;                                                             \
        for (int64_t k = 0; k < width; k++) o[k] = a[k] * g[k] + b[k] * (row[k] - mean[k]) + c[k];  \
    )                                                                                               \
}                                                                                                   \
                                                                                                    \
/* The whole training-mode forward of an (M, C) map seen as (rows, width = M·C/rows) rows:       \
 * statistics, running statistics (unbiased variance, as ATen), out = (x - mean)·w/σ + b.        \
 * weight, bias, running_mean, running_var may be NULL. Writes mean (C) and invstd (C, double). */ \
int geokd_bn_forward_##SUF(const T *x, T *out, int64_t rows, int64_t width, int64_t channels,      \
                           const T *weight, const T *bias, T *running_mean, T *running_var,        \
                           double momentum, double eps, int threads, T *mean, double *invstd) {    \
    int64_t m = rows * (width / channels);                                                          \
    double *sums = calloc((size_t)2 * width, sizeof(double));                                       \
    T *cols = malloc((size_t)4 * width * sizeof(T));                                                \
    int status = -1;                                                                                \
    if (!sums || !cols) goto done;                                                                  \
    T *shift = cols, *mean_w = cols + width, *scale_w = cols + 2 * width, *bias_w = cols + 3 * width; \
    for (int64_t k = 0; k < width; k++) shift[k] = x[k % channels]; /* the first pixel */          \
    if (stats_##SUF(x, shift, rows, width, threads, sums, sums + width)) goto done;                \
    for (int64_t c = 0; c < channels; c++) {                                                        \
        double s1 = 0, s2 = 0;                                                                      \
        for (int64_t k = c; k < width; k += channels) { s1 += sums[k]; s2 += sums[width + k]; }     \
        s1 /= (double)m; s2 /= (double)m;                                                           \
        double var = s2 - s1 * s1;                                                                  \
        var = var > 0 ? var : 0;                                                                    \
        mean[c] = (T)((double)x[c] + s1);                                                           \
        invstd[c] = 1.0 / sqrt(var + eps);                                                          \
        if (running_mean) {                                                                         \
            running_mean[c] += (T)momentum * (mean[c] - running_mean[c]);                           \
            T unbiased = (T)(var * ((double)m / (double)(m - 1)));                                  \
            running_var[c] += (T)momentum * (unbiased - running_var[c]);                            \
        }                                                                                           \
    }                                                                                               \
    for (int64_t k = 0; k < width; k++) {                                                           \
        int64_t c = k % channels;                                                                   \
        mean_w[k] = mean[c];                                                                        \
        scale_w[k] = (T)(invstd[c] * (weight ? (double)weight[c] : 1.0));                           \
        bias_w[k] = bias ? bias[c] : (T)0;                                                          \
    }                                                                                               \
    status = normalize_##SUF(x, mean_w, scale_w, bias_w, out, rows, width, threads);                \
done:                                                                                               \
    free(sums);                                                                                     \
    free(cols);                                                                                     \
    return status;                                                                                  \
}                                                                                                   \
                                                                                                    \
/* The backward of geokd_bn_forward: dx, and the weight's and bias's gradients (when weight).   \
 * dx = s·(dy - Σdy/M - x̂·Σ(dy·x̂)/M) = a·dy + b·(x - mean) + c, with s = w/σ, per channel. */   \
int geokd_bn_backward_##SUF(const T *x, const T *dy, T *dx, int64_t rows, int64_t width,          \
                            int64_t channels, const T *mean, const double *invstd, const T *weight, \
                            int threads, T *grad_weight, T *grad_bias) {                          \
    int64_t m = rows * (width / channels);                                                          \
    double *sums = calloc((size_t)2 * width, sizeof(double));                                       \
    T *cols = malloc((size_t)4 * width * sizeof(T));                                                \
    int status = -1;                                                                                \
    if (!sums || !cols) goto done;                                                                  \
    T *mean_w = cols, *a = cols + width, *b = cols + 2 * width, *c_w = cols + 3 * width;            \
    for (int64_t k = 0; k < width; k++) mean_w[k] = mean[k % channels];                             \
    if (backward_sums_##SUF(x, dy, mean_w, rows, width, threads, sums, sums + width)) goto done;    \
    for (int64_t c = 0; c < channels; c++) {                                                        \
        double sum_dy = 0, sum_dy_xmu = 0;                                                          \
        for (int64_t k = c; k < width; k += channels) { sum_dy += sums[k]; sum_dy_xmu += sums[width + k]; } \
        double is = invstd[c], scale = is * (weight ? (double)weight[c] : 1.0);                    \
        double ca = scale, cb = -scale * is * is * sum_dy_xmu / (double)m, cc = -scale * sum_dy / (double)m; \
        for (int64_t k = c; k < width; k += channels) { a[k] = (T)ca; b[k] = (T)cb; c_w[k] = (T)cc; } \
        if (grad_weight) { grad_weight[c] = (T)(sum_dy_xmu * is); grad_bias[c] = (T)sum_dy; }      \
    }                                                                                               \
    status = backward_input_##SUF(x, dy, mean_w, a, b, c_w, dx, rows, width, threads);              \
done:                                                                                               \
    free(sums);                                                                                     \
    free(cols);                                                                                     \
    return status;                                                                                  \
}

DEFINE(float, f32)
DEFINE(double, f64)
