// gpunet's compiled CPU kernels: the threads of NumPy's OpenBLAS and of gpunet's memory passes.
//
// A CNN step on the CPU alternates OpenBLAS GEMMs (on every core) with memory passes (max
// pooling) that ran on one thread. OpenBLAS's idle threads spin for about 0.1 s after each GEMM
// (its THREAD_TIMEOUT), so a pass handed to a thread of gpunet's own found the other core
// taken: the split pass ran slower than on one thread (0.11 -> 0.12-0.17 ms after a GEMM, 0.06
// without one). So gpunet runs OpenBLAS's parallel jobs on its own team instead, through
// OpenBLAS's public hook for that (openblas_set_threads_callback_function), and the passes
// split over the same threads: the thread that spins after a GEMM is the one the next pass
// needs. (CNN 28x28 step, two cores: 3.78 -> 3.53 ms; the MLPs' steps unchanged.)
//
// The team: the caller and up to MAX_HELPERS helper threads, started on first use. A helper
// spins for spin_us after each job (OpenBLAS's own threads do the same), then sleeps on a
// condition variable. One board, one split at a time:
// - fixed (OpenBLAS's jobs, which wait on each other inside a threaded GEMM, so all must run
//   at once): item 0 on the caller, item k on helper k;
// - claimed (gpunet's passes): every thread takes chunks of items until none is left; a
//   helper that wakes late takes none, and the caller then has done them all.
// state holds the split's number (odd while the caller writes the split's fields: a helper
// reads them between two equal even numbers) and the next unclaimed item.
// A second thread that calls while a split runs (two Python threads): a claimed split runs on
// that thread alone; a fixed one runs its items 1.. on threads started for the call.
// After a fork the child starts its own helpers on first use.
#include <atomic>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <pthread.h>

#include "common.h"

// (a namespace of its own, not anonymous: none of this is a kernel body, which must be inlined
// into the entry points' clones; tests/test_hostkernels.py looks for those by namespace)
namespace gpunet_threads {

const int MAX_HELPERS = 255;

struct Team {
    std::atomic<unsigned long long> state{0};
    std::atomic<long> done{0};              // items finished in the current split
    std::atomic<Job> job{nullptr};
    std::atomic<void*> ctx{nullptr};
    std::atomic<long> n{0}, chunk{1};
    std::atomic<int> fixed{0}, workers{1};  // claimed: helpers 1 .. workers - 1 take part
    std::atomic<int> helpers{0};            // started
    std::atomic<int> sleepers{0};
    std::mutex mu;
    std::condition_variable cv;
};

Team* team = nullptr;               // never freed: helpers wait on it until the process ends
std::mutex start_mu;
std::atomic<bool> in_use{false};
std::atomic<long> spin_us{100000};
std::atomic<int> forced{-1};        // gpunet_host_threads: the passes' threads (-1: OpenBLAS's)
typedef int (*GetThreads)(void);
typedef void (*SetCallback)(void*);
std::atomic<GetThreads> blas_threads{nullptr};
std::atomic<long> blas_calls{0};    // callbacks taken (tests)
std::atomic<long> team_splits{0};   // claimed splits run by more than one thread (tests)
std::atomic<SetCallback> blas_setter{nullptr};

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

long now_us() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

inline unsigned seq_of(unsigned long long s) { return (unsigned)(s >> 32); }

// claimed: take and run chunks of split `seq` until none is left
void claim(Team* t, unsigned seq, Job job, void* ctx, long n, long chunk) {
    unsigned long long s = t->state.load();
    for (;;) {
        if (seq_of(s) != seq) return;
        const long lo = (long)(s & 0xffffffffULL);
        if (lo >= n) return;
        const long hi = lo + chunk < n ? lo + chunk : n;
        if (!t->state.compare_exchange_weak(s, ((unsigned long long)seq << 32) | (unsigned long long)hi))
            continue;
        job(ctx, lo, hi);
        t->done.fetch_add(hi - lo);
        s = t->state.load();
    }
}

void helper_main(Team* t, int k) {
    unsigned seen = 0;
    for (;;) {
        unsigned seq;
        const long until = now_us() + spin_us.load();
        int spins = 0;
        while ((seq = seq_of(t->state.load())) == seen || (seq & 1)) {
            relax();
            if ((++spins & 255) == 0 && now_us() >= until) {
                std::unique_lock<std::mutex> lock(t->mu);
                t->sleepers.fetch_add(1);
                while ((seq = seq_of(t->state.load())) == seen || (seq & 1)) t->cv.wait(lock);
                t->sleepers.fetch_sub(1);
                break;
            }
        }
        const Job job = t->job.load();
        void* const ctx = t->ctx.load();
        const long n = t->n.load(), chunk = t->chunk.load();
        const int fixed = t->fixed.load(), workers = t->workers.load();
        if (seq_of(t->state.load()) != seq) continue;     // a newer split began: read it again
        seen = seq;
        if (fixed) {
            if (k < n) {
                job(ctx, k, k + 1);
                t->done.fetch_add(1);
            }
        } else if (k < workers) {
            claim(t, seq, job, ctx, n, chunk);
        }
    }
}

void forget_team() {
    team = nullptr;
    in_use.store(false);
    new (&start_mu) std::mutex();
}

// the team with at least `helpers` helpers (capped at MAX_HELPERS), or null
Team* get_team(int helpers) {
    if (helpers > MAX_HELPERS) helpers = MAX_HELPERS;
    Team* t = team;
    if (t && t->helpers.load() >= helpers) return t;
    std::lock_guard<std::mutex> lock(start_mu);
    if (!team) {
        static bool registered = false;
        if (!registered) {
            pthread_atfork(nullptr, nullptr, forget_team);
            registered = true;
        }
        team = new Team();
    }
    t = team;
    for (int k = t->helpers.load() + 1; k <= helpers; ++k) {
        try {
            std::thread(helper_main, t, k).detach();
        } catch (...) {
            break;
        }
        t->helpers.store(k);
    }
    return t;
}

// items [1, n) of a fixed split on threads started for this call, item 0 here
void fixed_on_new_threads(Job job, void* ctx, long n) {
    std::vector<std::thread> extra;
    long k = 1;
    for (; k < n; ++k) {
        try {
            extra.emplace_back(job, ctx, k, k + 1);
        } catch (...) {
            break;
        }
    }
    job(ctx, 0, 1);
    for (; k < n; ++k) job(ctx, k, k + 1);  // no thread could be started: in turn (last resort)
    for (auto& th : extra) th.join();
}

void run(Job job, void* ctx, long n, bool fixed, int threads) {
    const int want = fixed ? (int)(n - 1) : (threads < n ? threads : (int)n) - 1;
    Team* t = nullptr;
    if (want >= 1 && !in_use.exchange(true)) {
        t = get_team(want);
        if (!t || t->helpers.load() < (fixed ? want : 1)) {
            in_use.store(false);
            t = nullptr;
        }
    } else if (want >= 1 && fixed) {
        fixed_on_new_threads(job, ctx, n);
        return;
    }
    if (!t) {
        if (fixed && n > 1) fixed_on_new_threads(job, ctx, n);
        else job(ctx, 0, n);
        return;
    }
    const unsigned seq = seq_of(t->state.load()) + 2;
    t->state.store((unsigned long long)(seq - 1) << 32);     // odd: the fields are being written
    t->job.store(job);
    t->ctx.store(ctx);
    t->n.store(n);
    t->fixed.store(fixed ? 1 : 0);
    t->workers.store(want + 1);
    t->chunk.store(fixed ? 1 : (n >= 8 * (want + 1) ? n / (8 * (want + 1)) : 1));
    t->done.store(0);
    t->state.store(((unsigned long long)seq << 32) | (fixed ? 1ULL : 0ULL));
    if (t->sleepers.load() > 0) {
        std::lock_guard<std::mutex> lock(t->mu);
        t->cv.notify_all();
    }
    if (fixed) {
        job(ctx, 0, 1);
        while (t->done.load() != n - 1) relax();
    } else {
        team_splits.fetch_add(1, std::memory_order_relaxed);
        claim(t, seq, job, ctx, n, t->chunk.load());
        while (t->done.load() != n) relax();
    }
    in_use.store(false);
}

typedef void (*DoJob)(int thread_num, void* jobdata, int dojob_data);
struct BlasJobs {
    DoJob dojob;
    char* data;
    size_t size;
    int arg;
};

void blas_items(void* ctx, long lo, long hi) {
    const BlasJobs* b = (const BlasJobs*)ctx;
    for (long i = lo; i < hi; ++i) b->dojob((int)i, b->data + i * b->size, b->arg);
}

int pass_threads() {
    const int f = forced.load();
    if (f >= 1) return f;
    const GetThreads g = blas_threads.load();
    return g ? g() : 1;
}

void split(Job job, void* ctx, long n) { run(job, ctx, n, false, pass_threads()); }

}  // namespace gpunet_threads

using namespace gpunet_threads;

extern "C" {

// OpenBLAS's threads callback: its `numjobs` jobs at once, job 0 on the calling thread
void gpunet_host_blas_callback(int sync, DoJob dojob, int numjobs, size_t size, void* data, int arg) {
    (void)sync;     // OpenBLAS passes 1: return when every job is done, as run() does
    blas_calls.fetch_add(1, std::memory_order_relaxed);
    BlasJobs b = {dojob, (char*)data, size, arg};
    run(blas_items, &b, numjobs, true, numjobs);
}

// Hands NumPy's OpenBLAS threading to the team: setter is its
// openblas_set_threads_callback_function, get_threads its openblas_get_num_threads (the
// passes split over that many threads). setter null: OpenBLAS's own threads again.
void gpunet_host_blas_install(void* setter, void* get_threads) {
    if (setter) {
        blas_setter.store((SetCallback)setter);
        blas_threads.store((GetThreads)get_threads);
        ((SetCallback)setter)((void*)gpunet_host_blas_callback);
    } else {
        const SetCallback s = blas_setter.exchange(nullptr);
        blas_threads.store(nullptr);
        if (s) s(nullptr);
    }
}

// The passes' threads: force >= 1 sets a count (tests), 0 follows OpenBLAS's again, < 0
// asks; spin >= 0: how long (us) a helper spins after a job before it sleeps. Returns the
// count the next pass uses.
int gpunet_host_threads(int force, long spin) {
    if (force >= 1) forced.store(force > MAX_HELPERS + 1 ? MAX_HELPERS + 1 : force);
    else if (force == 0) forced.store(-1);
    if (spin >= 0) spin_us.store(spin);
    return pass_threads();
}

// helpers started in this process, OpenBLAS callbacks taken, passes split (tests)
int gpunet_host_helpers(void) { return team ? team->helpers.load() : 0; }
long gpunet_host_blas_calls(void) { return blas_calls.load(); }
long gpunet_host_team_splits(void) { return team_splits.load(); }

}  // extern "C"
