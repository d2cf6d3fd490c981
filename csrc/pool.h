// A persistent pool of worker threads for the batch slices of one kernel call.
// Why: creating a thread costs tens to hundreds of microseconds on this kind of
// machine, as much as a whole training step of a small model; the pool's
// workers are created once and wait for the next call (briefly spinning, since
// training calls come back to back, then sleeping).
//
// One call at a time uses the pool; a second concurrent call (two models in two
// Python threads) or a call in a forked child gets fresh threads instead, so
// nothing ever waits on the pool or touches it in a process that does not own it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define FASTSEQ_POOL 1
#endif

namespace fastseq {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

class SlicePool {
   public:
    // Process-wide; never destroyed, so workers blocked at interpreter exit are
    // not joined (or terminated) by a static destructor.
    static SlicePool& instance() {
        static SlicePool* p = new SlicePool();
        return *p;
    }

    // Runs job(p) for p = 0..parts-1 (p = 0 on the calling thread) and returns
    // when all are done.
    void run(int parts, const std::function<void(int)>& job) {
        if (parts <= 1) {
            job(0);
            return;
        }
#ifdef FASTSEQ_POOL
        if (getpid() == pid_) {
            std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
            if (busy.owns_lock()) {
                run_pooled(parts, job);
                return;
            }
        }
#endif
        // A thread the system refuses (its thread limit) is not fatal: the
        // caller runs that part itself. (Unwinding past started threads would
        // destroy joinable std::threads: std::terminate.)
        std::vector<std::thread> th;
        int started = 1;
        try {
            th.reserve(parts - 1);
            for (; started < parts; ++started) th.emplace_back([&job, p = started] { job(p); });
        } catch (const std::exception&) {
        }
        job(0);
        for (int p = started; p < parts; ++p) job(p);
        for (auto& t : th) t.join();
    }

   private:
    SlicePool() {
#ifdef FASTSEQ_POOL
        pid_ = getpid();
#endif
    }

    void run_pooled(int parts, const std::function<void(int)>& job) {
        int pooled = parts;  // parts the workers take; the caller runs the rest
        {
            std::lock_guard<std::mutex> lk(m_);
            try {
                while (int(workers_.size()) < parts - 1) {
                    const int id = int(workers_.size()) + 1;
                    // started before the job is published, told the generation it has seen
                    workers_.emplace_back(&SlicePool::loop, this, id, gen_);
                }
            } catch (const std::exception&) {  // thread limit: fewer workers, same result
                pooled = int(workers_.size()) + 1;
            }
            job_ = &job;
            parts_ = pooled;
            remaining_.store(pooled - 1, std::memory_order_relaxed);
            ++gen_;
            gen_seen_.store(gen_, std::memory_order_release);
        }
        cv_.notify_all();
        job(0);
        for (int p = pooled; p < parts; ++p) job(p);
        for (int s = 0; remaining_.load(std::memory_order_acquire) != 0; ++s) {
            if (s < 20000) {
                cpu_relax();
            } else {
                std::unique_lock<std::mutex> lk(m_);
                done_cv_.wait(lk, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
                break;
            }
        }
    }

    void loop(int id, unsigned seen) {
        for (;;) {
            // spin a little for the next call (training calls come back to back), then sleep
            for (int s = 0; s < 5000 && gen_seen_.load(std::memory_order_acquire) == seen; ++s) cpu_relax();
            const std::function<void(int)>* job;
            int parts;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return gen_ != seen; });
                seen = gen_;  // the job, its size and its generation read together
                job = job_;
                parts = parts_;
            }
            if (id >= parts) continue;  // this call needs fewer workers
            (*job)(id);
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(m_);
                done_cv_.notify_one();
            }
        }
    }

    std::mutex busy_;  // held by the one call using the pool
    std::mutex m_;
    std::condition_variable cv_, done_cv_;
    std::vector<std::thread> workers_;
    const std::function<void(int)>* job_ = nullptr;
    int parts_ = 0;
    unsigned gen_ = 0;                    // guarded by m_
    std::atomic<unsigned> gen_seen_{0};   // a copy of gen_ for the lock-free spin
    std::atomic<int> remaining_{0};
    int pid_ = 0;
};

}  // namespace fastseq
