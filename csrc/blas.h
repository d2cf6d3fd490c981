// Thin typed front of the scipy-openblas32 cblas interface, so the kernels are
// written once as templates over float and double.
// Row-major everywhere: C (M x N) = alpha op(A) op(B) + beta C.
#pragma once
#include <cblas.h>

#include <pthread.h>

#include <mutex>

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

inline int num_threads() { return scipy_openblas_get_num_threads(); }

// While any kernel runs its own threads (one batch slice per core), the shared
// OpenBLAS runs single-threaded so the two levels do not oversubscribe the
// cores; the count the user set is restored when the last such kernel ends.
// (This OpenBLAS build exports no per-thread setting, so it is a process-wide
// count guarded by a reference count.)
class SingleThreaded {
   public:
    SingleThreaded() {
        std::lock_guard<std::mutex> lock(mu());
        if (users()++ == 0) {
            if (orphaned()) {  // OpenBLAS is already at 1, saved() holds the user's count
                orphaned() = false;
                return;
            }
            saved() = scipy_openblas_get_num_threads();
            if (saved() != 1) scipy_openblas_set_num_threads(1);
        }
    }
    ~SingleThreaded() {
        std::lock_guard<std::mutex> lock(mu());
        if (--users() == 0 && saved() != 1) scipy_openblas_set_num_threads(saved());
    }
    SingleThreaded(const SingleThreaded&) = delete;
    SingleThreaded& operator=(const SingleThreaded&) = delete;
    // The user's count, also while a kernel has lowered it.
    static int user_threads() {
        std::lock_guard<std::mutex> lock(mu());
        return users() || orphaned() ? saved() : scipy_openblas_get_num_threads();
    }
    // Sets the user's count. While kernels run single-threaded it is recorded
    // and applied when the last one ends; setting OpenBLAS directly then would
    // be undone by that restore (and would oversubscribe the running kernels).
    static void set_user_threads(int n) {
        std::lock_guard<std::mutex> lock(mu());
        if (users()) {
            saved() = n;
        } else {
            orphaned() = false;
            scipy_openblas_set_num_threads(n);
        }
    }
    // A child forked while another thread ran a kernel inherits that kernel's
    // count of 1 and its reference, but not the thread that would give them
    // back: without this, the child's BLAS stayed single-threaded for good (and
    // a mutex held at the fork stayed locked). The child only takes note (no
    // OpenBLAS call inside a fork handler); the count is restored by the next
    // kernel's end or set_num_threads.
    static void install_fork_handler() {
        pthread_atfork([] { mu().lock(); }, [] { mu().unlock(); },
                       [] {
                           if (users()) {
                               users() = 0;
                               orphaned() = saved() != 1;
                           }
                           mu().unlock();
                       });
    }

   private:
    static std::mutex& mu() {
        static std::mutex m;
        return m;
    }
    static int& users() {
        static int n = 0;
        return n;
    }
    static bool& orphaned() {  // in a fork child: OpenBLAS left at 1 by a kernel of the parent
        static bool b = false;
        return b;
    }
    static int& saved() {
        static int n = 1;
        return n;
    }
};

}  // namespace blas
}  // namespace fastseq
