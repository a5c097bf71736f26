/*
 * InterScale's CPU attention kernel: exact softmax attention of one sample for small head
 * dimensions (the published model uses 4), forward and backward, float32.
 *
 * Why a kernel of our own: with a head dimension of 4 the fused flash kernel of PyTorch spends
 * its time in matrix products whose inner dimension is 4 and in an additive mask it reads for
 * every score. Here every key loop runs over contiguous memory (keys and values transposed to
 * [H][D][L]), the scores of one query row stay in a row buffer in the L1 cache, and the masked
 * keys (the query itself, plus the neighbours under long_range) are cleared in that buffer.
 *
 * Sequence layout: positions 0..L-2 are the cells of the sample, L-1 is its CLS token. A cell
 * row never attends to itself nor to the keys listed for it in (excl_ptr, excl_idx) (CSR over
 * the cells, local indices; may be NULL); the CLS row attends to every key.
 *
 * Work is cut into tasks of `chunk` query rows of one head; the caller runs task ranges on its
 * own threads (the functions below hold no global state). The backward writes each task's key
 * and value gradients into the task's own buffer, and attn_reduce adds the buffers in task
 * order: the result does not depend on how tasks are spread over threads.
 *
 * Compiled by interscale/nn/_cpu_kernel.py with -O3 -fopenmp-simd (vectorised loops, no OpenMP
 * runtime) and -fno-math-errno.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0, within about 2 ulp of expf (Cody-Waite reduction, degree-6 polynomial);
   inputs below the smallest normal result give 0, as does -inf */
static inline float exp_nonpositive(float x) {
    const float lo = -87.33654f;
    float xc = x < lo ? lo : x;
    float kf = rintf(xc * 1.44269504088896341f);
    float r = xc - kf * 0.693359375f;
    r = r + kf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += (int32_t)kf * (1 << 23);
    float out;
    memcpy(&out, &bits, 4);
    return x < lo ? 0.0f : out;
}

/* s[j] = scale * <q_i, k_j> for every key j */
static inline void row_scores(const float *qi, const float *K, float *s, int L, int D,
                              float scale) {
    for (int j = 0; j < L; j++) s[j] = 0.0f;
    for (int c = 0; c < D; c++) {
        const float qc = qi[c] * scale;
        const float *kc = K + (int64_t)c * L;
#pragma omp simd
        for (int j = 0; j < L; j++) s[j] += qc * kc[j];
    }
}

/* set the excluded keys of query row i to `value` */
static inline void clear_excluded(float *s, int i, int L, const int64_t *excl_ptr,
                                  const int64_t *excl_idx, float value) {
    if (i >= L - 1) return; /* the CLS row sees everything */
    s[i] = value;
    if (excl_ptr == NULL) return;
    for (int64_t e = excl_ptr[i]; e < excl_ptr[i + 1]; e++) s[excl_idx[e]] = value;
}

/* The head and the query rows [i0, i1) of task t; chunks = tasks per head */
static inline void task_rows(int64_t t, int64_t chunks, int chunk, int L, int *h, int *i0,
                             int *i1) {
    *h = (int)(t / chunks);
    *i0 = (int)(t % chunks) * chunk;
    *i1 = *i0 + chunk < L ? *i0 + chunk : L;
}

/* Forward of tasks [t0, t1): o [H][L][D], lse [H][L]; s_buf holds L floats. */
void attn_forward(const float *q, const float *kt, const float *vt, float *o, float *lse,
                  int H, int L, int D, float scale, int chunk, const int64_t *excl_ptr,
                  const int64_t *excl_idx, int64_t t0, int64_t t1, float *s) {
    const int64_t chunks = (L + chunk - 1) / chunk;
    for (int64_t t = t0; t < t1; t++) {
        int h, i0, i1;
        task_rows(t, chunks, chunk, L, &h, &i0, &i1);
        const float *K = kt + (int64_t)h * D * L;
        const float *V = vt + (int64_t)h * D * L;
        for (int i = i0; i < i1; i++) {
            const int64_t r = (int64_t)h * L + i;
            row_scores(q + r * D, K, s, L, D, scale);
            clear_excluded(s, i, L, excl_ptr, excl_idx, -INFINITY);
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int j = 0; j < L; j++) m = s[j] > m ? s[j] : m;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < L; j++) {
                const float p = exp_nonpositive(s[j] - m);
                s[j] = p;
                sum += p;
            }
            const float inv = 1.0f / sum;
            for (int c = 0; c < D; c++) {
                const float *vc = V + (int64_t)c * L;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int j = 0; j < L; j++) acc += s[j] * vc[j];
                o[r * D + c] = acc * inv;
            }
            lse[r] = m + logf(sum);
        }
    }
}

/* Backward of tasks [t0, t1): dq [H][L][D]; the key and value gradients of task t go to
   bufs + t * 2 * D * L ([2][D][L], overwritten). s and dp hold L floats each. */
void attn_backward(const float *dout, const float *q, const float *kt, const float *vt,
                   const float *o, const float *lse, float *dq, float *bufs, int H, int L, int D,
                   float scale, int chunk, const int64_t *excl_ptr, const int64_t *excl_idx,
                   int64_t t0, int64_t t1, float *s, float *dp) {
    const int64_t chunks = (L + chunk - 1) / chunk;
    const int64_t per_task = (int64_t)2 * D * L;
    for (int64_t t = t0; t < t1; t++) {
        int h, i0, i1;
        task_rows(t, chunks, chunk, L, &h, &i0, &i1);
        const float *K = kt + (int64_t)h * D * L;
        const float *V = vt + (int64_t)h * D * L;
        float *dK = bufs + t * per_task;
        float *dV = dK + (int64_t)D * L;
        memset(dK, 0, sizeof(float) * per_task);
        for (int i = i0; i < i1; i++) {
            const int64_t r = (int64_t)h * L + i;
            const float *qi = q + r * D;
            const float *doi = dout + r * D;
            float delta = 0.0f;
            for (int c = 0; c < D; c++) delta += doi[c] * o[r * D + c];
            row_scores(qi, K, s, L, D, scale);
            for (int j = 0; j < L; j++) dp[j] = 0.0f;
            for (int c = 0; c < D; c++) {
                const float dc = doi[c];
                const float *vc = V + (int64_t)c * L;
#pragma omp simd
                for (int j = 0; j < L; j++) dp[j] += dc * vc[j];
            }
            const float l = lse[r];
#pragma omp simd
            for (int j = 0; j < L; j++) {
                const float p = exp_nonpositive(s[j] - l);
                s[j] = p;                    /* probability */
                dp[j] = p * (dp[j] - delta); /* gradient of the score */
            }
            clear_excluded(s, i, L, excl_ptr, excl_idx, 0.0f);
            clear_excluded(dp, i, L, excl_ptr, excl_idx, 0.0f);
            for (int c = 0; c < D; c++) {
                const float *kc = K + (int64_t)c * L;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int j = 0; j < L; j++) acc += dp[j] * kc[j];
                dq[r * D + c] = acc * scale;
                const float qc = qi[c] * scale;
                const float dc = doi[c];
                float *dkc = dK + (int64_t)c * L;
                float *dvc = dV + (int64_t)c * L;
#pragma omp simd
                for (int j = 0; j < L; j++) {
                    dkc[j] += dp[j] * qc;
                    dvc[j] += s[j] * dc;
                }
            }
        }
    }
}

/* Sum the task buffers of backward in task order, for output rows [r0, r1) of the H * 2 * D
   rows of [H][2][D][L] (dk^T then dv^T per head). */
void attn_reduce(const float *bufs, float *out, int H, int L, int D, int chunk, int64_t r0,
                 int64_t r1) {
    const int64_t chunks = (L + chunk - 1) / chunk;
    const int64_t per_task = (int64_t)2 * D * L;
    for (int64_t row = r0; row < r1; row++) {
        const int64_t h = row / (2 * D);
        const int64_t within = row % (2 * D);
        float *dst = out + row * L;
        for (int j = 0; j < L; j++) dst[j] = 0.0f;
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float *src = bufs + (h * chunks + ch) * per_task + within * L;
#pragma omp simd
            for (int j = 0; j < L; j++) dst[j] += src[j];
        }
    }
}
