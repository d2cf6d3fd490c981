// Thin typed front of the scipy-openblas32 cblas interface, so the kernels are
// written once as templates over float and double.
// Row-major everywhere: C (M x N) = alpha op(A) op(B) + beta C.
#pragma once
#include <cblas.h>

namespace fastseq {
namespace blas {

inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    scipy_cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    scipy_cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// y = alpha op(A) x + beta y, A row-major M x N.
inline void gemv(bool ta, int M, int N, float alpha, const float* A, int lda, const float* x,
                 float beta, float* y) {
    scipy_cblas_sgemv(CblasRowMajor, tr(ta), M, N, alpha, A, lda, x, 1, beta, y, 1);
}
inline void gemv(bool ta, int M, int N, double alpha, const double* A, int lda, const double* x,
                 double beta, double* y) {
    scipy_cblas_dgemv(CblasRowMajor, tr(ta), M, N, alpha, A, lda, x, 1, beta, y, 1);
}

inline int num_threads() { return scipy_openblas_get_num_threads(); }

}  // namespace blas
}  // namespace fastseq
