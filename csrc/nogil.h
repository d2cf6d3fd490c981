// Releases the GIL around a kernel, like py::gil_scoped_release, and survives
// interpreter shutdown.
// Why: a daemon thread still inside a kernel when Python finalizes is ended by
// pthread_exit as it takes the GIL back (Python < 3.14). Here that happens in a
// destructor, implicitly noexcept, and the forced unwind out of it is
// std::terminate: the whole process aborted at exit.
// How: an atexit hook (atexit runs before Python marks itself finalizing)
// sets `exiting`, lets go of the GIL and waits until every thread inside a
// kernel has either taken the GIL back (while that is still safe) or, having
// finished after the hook, parked for good instead of taking it; exit() then
// ends the parked threads. A kernel running at exit delays exit until it ends.
#pragma once
#include <Python.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace fastseq {

class NoGil {
   public:
    NoGil() {
        active().fetch_add(1, std::memory_order_acq_rel);
        state_ = PyEval_SaveThread();
    }
    ~NoGil() {
        // the thread that runs the exit (and later atexit hooks) may always take the GIL back
        if (exiting().load(std::memory_order_acquire) && std::this_thread::get_id() != exit_thread()) {
            parked().fetch_add(1, std::memory_order_acq_rel);
            for (;;) pause();
        }
        PyEval_RestoreThread(state_);
        active().fetch_sub(1, std::memory_order_acq_rel);
    }
    NoGil(const NoGil&) = delete;
    NoGil& operator=(const NoGil&) = delete;

    // The atexit hook; called with the GIL held.
    static void at_exit() {
        exit_thread() = std::this_thread::get_id();
        exiting().store(true, std::memory_order_release);
        PyThreadState* st = PyEval_SaveThread();
        while (active().load(std::memory_order_acquire) != parked().load(std::memory_order_acquire))
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        PyEval_RestoreThread(st);
    }
    // Once per process: a forked child has only the forking thread, which is in no kernel.
    static void install_fork_handler() {
        pthread_atfork(nullptr, nullptr, [] {
            active().store(0);
            parked().store(0);
        });
    }

   private:
    static std::atomic<int>& active() {  // threads between release and retake
        static std::atomic<int> n{0};
        return n;
    }
    static std::atomic<int>& parked() {
        static std::atomic<int> n{0};
        return n;
    }
    static std::thread::id& exit_thread() {  // written before `exiting` is published
        static std::thread::id id;
        return id;
    }
    static std::atomic<bool>& exiting() {
        static std::atomic<bool> b{false};
        return b;
    }
    PyThreadState* state_;
};

}  // namespace fastseq
