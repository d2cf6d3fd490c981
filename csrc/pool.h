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
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
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

// How long a thread spins for a partner before it blocks. Partners on free
// cores arrive within microseconds; a partner that was descheduled (another
// process on the core) comes back after a scheduler tick, milliseconds, and a
// thread spinning all that time only takes the core it would need. Measured as
// time, not iterations: `pause` costs 10 to 140 cycles depending on the CPU.
constexpr std::chrono::microseconds kSpinBudget{30};

// Spins until done() or the budget is spent; returns done().
template <class Done>
bool spin_briefly(Done&& done) {
    const auto until = std::chrono::steady_clock::now() + kSpinBudget;
    for (int s = 1;; ++s) {
        if (done()) return true;
        cpu_relax();
        if ((s & 63) == 0 && std::chrono::steady_clock::now() >= until) return done();
    }
}

// The number of cores this process may run on (its affinity mask, as
// taskset or a container sets it), at least 1: more threads than that only
// take turns on the same cores.
inline int usable_cores() {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return std::max(1u, std::thread::hardware_concurrency());
}

// A barrier for a few threads that meet every few microseconds (generation's
// steps): a short spin, then a blocking wait on a condition variable, so a
// thread whose partner was descheduled gives its core away instead of
// spinning (or yielding in a loop) until the partner comes back.
class Barrier {
   public:
    explicit Barrier(int n) : n_(n) {}
    void reset(int n) { n_ = n; }  // before any thread waits
    // Returns after all n threads have called wait(). The last to arrive runs
    // on_release() first (alone, before anyone leaves), passing whether a
    // thread had to block in this round.
    template <class F>
    void wait(F&& on_release) {
        const unsigned g = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            count_.store(0, std::memory_order_relaxed);
            on_release(blocked_.exchange(false, std::memory_order_relaxed));
            gen_.store(g + 1, std::memory_order_seq_cst);
            // seq_cst store and load here, seq_cst increment and load in the
            // sleeper: one of the two sees the other (no lost wake-up)
            if (sleepers_.load(std::memory_order_seq_cst) > 0) {
                std::lock_guard<std::mutex> lk(m_);
                cv_.notify_all();
            }
            return;
        }
        if (spin_briefly([&] { return gen_.load(std::memory_order_acquire) != g; })) return;
        std::unique_lock<std::mutex> lk(m_);
        blocked_.store(true, std::memory_order_relaxed);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_seq_cst) != g; });
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }

   private:
    std::atomic<int> count_{0};
    std::atomic<unsigned> gen_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> blocked_{false};
    std::mutex m_;
    std::condition_variable cv_;
    int n_;
};

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

    // run() when the pool's workers are free in this process; false (nothing
    // run) when another call holds them or this is a forked child: a caller
    // with a serial fallback (csrc/matvec.h) then takes it rather than paying
    // for new threads.
    bool try_run(int parts, const std::function<void(int)>& job) {
#ifdef FASTSEQ_POOL
        if (parts >= 2 && getpid() == pid_) {
            std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
            if (busy.owns_lock()) {
                run_pooled(parts, job);
                return true;
            }
        }
#endif
        return false;
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
        if (!spin_briefly([&] { return remaining_.load(std::memory_order_acquire) == 0; })) {
            std::unique_lock<std::mutex> lk(m_);
            done_cv_.wait(lk, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
        }
    }

    void loop(int id, unsigned seen) {
        for (;;) {
            // spin a little for the next call (training calls come back to back), then sleep
            spin_briefly([&] { return gen_seen_.load(std::memory_order_acquire) != seen; });
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
