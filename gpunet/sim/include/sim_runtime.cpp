// defines: gpunet_sim_run (one kernel launch), the barrier and warp rendezvous the
// intrinsics of cuda_host.h call, and the fibers that carry the threads of a block
//
// The sim device's execution engine, built once per process into a shared library that
// every compiled kernel module links against at load time.
//
// A launch runs its blocks one after another on the calling OS thread. The threads of a
// block are fibers: a worker (a stack and a saved stack pointer, switched by ten
// instructions of assembly) runs one CUDA thread's body as a plain call; when the body
// returns, the same worker starts the next unstarted thread at once, so a kernel without
// barriers costs one call per thread. A thread that waits (at __syncthreads or a *_sync
// warp operation) parks its worker: when a thread whose wait is over is queued, control
// passes straight to that thread's worker (one stack switch; the scheduler would take the
// same thread next), otherwise back to the scheduler, which starts the next thread on
// another worker. The thread
// that completes a rendezvous (the last of the block at a barrier, the last lane of the
// mask at a warp operation) computes every participant's result, queues the others and
// carries on. When no thread can run and some have not exited, the block is deadlocked:
// the launch fails with a message naming the kernel, the block and who waits where.
//
// Workers and their stacks are kept for the next block and launch; a failed block
// abandons its parked workers' stacks (they are re-initialized, never resumed).
// Under AddressSanitizer every switch is annotated (__sanitizer_start_switch_fiber /
// __sanitizer_finish_switch_fiber).
#include "cuda_host.h"

#include <stdarg.h>
#include <sys/mman.h>
#include <signal.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GPUNET_SIM_ASAN 1
#else
#define GPUNET_SIM_ASAN 0
#endif

#if !defined(__x86_64__) || defined(GPUNET_SIM_UCONTEXT)
#include <ucontext.h>
#define GPUNET_SIM_USE_UCONTEXT 1
#else
#define GPUNET_SIM_USE_UCONTEXT 0
#endif

extern "C" {
uint3 gpunet_sim_threadIdx;
uint3 gpunet_sim_blockIdx;
dim3 gpunet_sim_blockDim;
dim3 gpunet_sim_gridDim;
// Dynamic shared memory (CUDA's default per-block limit); extern __shared__ arrays point here.
alignas(256) unsigned char gpunet_sim_dynamic_smem[48 * 1024];
}

namespace {

constexpr int kMaxThreads = 1024;
static_assert((kMaxThreads & (kMaxThreads - 1)) == 0, "the ready ring indexes with a mask");
constexpr size_t kDynSmem = sizeof(gpunet_sim_dynamic_smem);
#if GPUNET_SIM_ASAN
constexpr size_t kStack = 1024 * 1024;  // sanitizer reports run on the fiber's stack
#else
constexpr size_t kStack = 128 * 1024;
#endif

// ---------------------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------------------
struct Worker;
extern "C" void gpunet_sim_worker_main(Worker* w);

#if !GPUNET_SIM_USE_UCONTEXT
// gpunet_sim_swap(save, load): push the callee-saved registers, store rsp in *save, load
// rsp from `load`, pop and return into the other context.
extern "C" void gpunet_sim_swap(void** save, void* load);
extern "C" void gpunet_sim_trampoline();
asm(R"(
    .text
    .p2align 4
    .globl gpunet_sim_swap
    .hidden gpunet_sim_swap
    .type gpunet_sim_swap, @function
gpunet_sim_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpunet_sim_swap, .-gpunet_sim_swap

    .p2align 4
    .globl gpunet_sim_trampoline
    .hidden gpunet_sim_trampoline
    .type gpunet_sim_trampoline, @function
gpunet_sim_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size gpunet_sim_trampoline, .-gpunet_sim_trampoline
)");
#endif

struct Worker {
    char* lo = nullptr;  // the usable stack is [lo, lo + kStack); a guard page lies below
    char* top = nullptr;  // where the stack starts: staggered per worker (see new_worker)
#if GPUNET_SIM_USE_UCONTEXT
    ucontext_t ctx;
#else
    void* sp = nullptr;
#endif
    int tid = -1;
#if GPUNET_SIM_ASAN
    void* fake = nullptr;
#endif
};

enum State : unsigned char { kUnstarted, kRunning, kReady, kBarrier, kWarp, kExited, kFailed };

struct Thread {
    State st;
    Worker* w;
    unsigned long long in, out;  // warp operation: this lane's value and result
    int src;                     // shuffle: the lane read from
};

// A warp operation in progress: the lanes of `mask` rendezvous at one call site.
struct Group {
    unsigned int mask, arrived;
    int kind;
    const char* file;
    int line;
};

struct AMask {
    unsigned int arrived;
    const char* file;
    int line;
};

struct Sched {
    // the launch
    void (*thunk)(void**) = nullptr;
    void** args = nullptr;
    const char* name = "";
    // the block
    int n = 0;  // threads
    Thread t[kMaxThreads];
    std::vector<Group> groups[kMaxThreads / 32];
    AMask amask[kMaxThreads / 32];
    int ready[kMaxThreads];
    int rhead = 0, rcount = 0;
    int next = 0;  // first unstarted thread
    int exited = 0;
    int cur = -1;
    // the barrier in progress
    int bar_count = 0, bar_op = 0, bar_acc = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    // failure
    bool failed = false;
    volatile sig_atomic_t in_kernel = 0;  // a worker (kernel code) is running
    std::string msg;
    // contexts
#if GPUNET_SIM_USE_UCONTEXT
    ucontext_t sched_ctx;
#else
    void* sched_sp = nullptr;
#endif
#if GPUNET_SIM_ASAN
    void* sched_fake = nullptr;
    const void* main_lo = nullptr;
    size_t main_size = 0;
    bool by_scheduler = false;  // the last switch to a worker came from the scheduler
#endif
    std::vector<Worker*> all, spare;
};

Sched S;
std::mutex launch_mutex;

inline __attribute__((always_inline)) void set_indices(int tid) {
    S.cur = tid;
    const unsigned bx = gpunet_sim_blockDim.x, by = gpunet_sim_blockDim.y;
    const unsigned u = static_cast<unsigned>(tid);
    if (by == 1 && gpunet_sim_blockDim.z == 1) {
        gpunet_sim_threadIdx = uint3{u, 0, 0};
    } else {
        gpunet_sim_threadIdx = uint3{u % bx, (u / bx) % by, u / (bx * by)};
    }
}

// The ready queue's first thread, taken off it and made the running thread (its indices
// set); the scheduler's loop and a parking worker's direct hand-off both take it so.
inline __attribute__((always_inline)) int run_next_ready() {
    const int tid = S.ready[S.rhead];
    S.rhead = (S.rhead + 1) & (kMaxThreads - 1);
    --S.rcount;
    S.t[tid].st = kRunning;
    set_indices(tid);
    return tid;
}

// ---------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------
void init_context(Worker* w) {
#if GPUNET_SIM_USE_UCONTEXT
    getcontext(&w->ctx);
    w->ctx.uc_stack.ss_sp = w->lo;
    w->ctx.uc_stack.ss_size = static_cast<size_t>(w->top - w->lo);
    w->ctx.uc_link = nullptr;
    makecontext(&w->ctx, reinterpret_cast<void (*)()>(gpunet_sim_worker_main), 1, w);
#else
    // Stack image that gpunet_sim_swap pops: r15 r14 r13 r12 rbx rbp, then the return
    // address; the trampoline calls r13(r12) with rsp 16-byte aligned.
    void** sp = reinterpret_cast<void**>(w->top) - 9;
    sp[0] = nullptr;                                               // r15
    sp[1] = nullptr;                                               // r14
    sp[2] = reinterpret_cast<void*>(&gpunet_sim_worker_main);       // r13
    sp[3] = w;                                                     // r12
    sp[4] = nullptr;                                               // rbx
    sp[5] = nullptr;                                               // rbp
    sp[6] = reinterpret_cast<void*>(&gpunet_sim_trampoline);        // return address
    sp[7] = nullptr;
    sp[8] = nullptr;
    w->sp = sp;
#endif
#if GPUNET_SIM_ASAN
    __asan_unpoison_memory_region(w->lo, kStack);
    w->fake = nullptr;
#endif
}

Worker* new_worker() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* mem = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return nullptr;
    mprotect(mem, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    Worker* w = new Worker;
    w->lo = static_cast<char*>(mem) + page;
    // Stacks kStack apart would put every fiber's hot top frames in the same cache sets;
    // start each at a different offset (a multiple of 64 bytes below 16 KiB).
    w->top = w->lo + kStack - (S.all.size() * 1088) % 16384;
    init_context(w);
    S.all.push_back(w);
    return w;
}

// Scheduler -> worker.
void switch_to_worker(Worker* w) {
    S.in_kernel = 1;
#if GPUNET_SIM_ASAN
    S.by_scheduler = true;
    __sanitizer_start_switch_fiber(&S.sched_fake, w->lo, kStack);
#endif
#if GPUNET_SIM_USE_UCONTEXT
    swapcontext(&S.sched_ctx, &w->ctx);
#else
    gpunet_sim_swap(&S.sched_sp, w->sp);
#endif
#if GPUNET_SIM_ASAN
    __sanitizer_finish_switch_fiber(S.sched_fake, nullptr, nullptr);
#endif
    S.in_kernel = 0;
}

#if GPUNET_SIM_ASAN
// A worker resumed: learn the scheduler's stack when the scheduler resumed it (a worker
// that another worker resumed, see switch_to_ready, learns nothing).
void resumed(Worker* w) {
    const void* lo;
    size_t size;
    __sanitizer_finish_switch_fiber(w->fake, &lo, &size);
    if (S.by_scheduler) {
        S.main_lo = lo;
        S.main_size = size;
    }
}
#endif

// Worker -> scheduler; returns when this worker is resumed.
void switch_to_scheduler(Worker* w) {
#if GPUNET_SIM_ASAN
    __sanitizer_start_switch_fiber(&w->fake, S.main_lo, S.main_size);
#endif
#if GPUNET_SIM_USE_UCONTEXT
    swapcontext(&w->ctx, &S.sched_ctx);
#else
    gpunet_sim_swap(&w->sp, S.sched_sp);
#endif
#if GPUNET_SIM_ASAN
    resumed(w);
#endif
}

// Worker -> the next ready thread's worker, without a round trip through the scheduler
// (whose loop would take the same thread next: the caller checked S.rcount and S.failed,
// and the switch is what run_block does with them); returns when this worker is resumed.
inline __attribute__((always_inline)) void switch_to_ready(Worker* w) {
    Worker* to = S.t[run_next_ready()].w;
#if GPUNET_SIM_ASAN
    S.by_scheduler = false;
    __sanitizer_start_switch_fiber(&w->fake, to->lo, kStack);
#endif
#if GPUNET_SIM_USE_UCONTEXT
    swapcontext(&w->ctx, &to->ctx);
#else
    gpunet_sim_swap(&w->sp, to->sp);
#endif
#if GPUNET_SIM_ASAN
    resumed(w);
#endif
}

// ---------------------------------------------------------------------------------------
// Failure
// ---------------------------------------------------------------------------------------
const char* base_name(const char* path) {
    const char* s = strrchr(path ? path : "?", '/');
    return s ? s + 1 : (path ? path : "?");
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string where_block() {
    return format("kernel '%s' block (%u, %u, %u)", S.name, gpunet_sim_blockIdx.x,
                  gpunet_sim_blockIdx.y, gpunet_sim_blockIdx.z);
}

std::string where_thread() {
    return where_block() + format(" thread (%u, %u, %u)", gpunet_sim_threadIdx.x,
                                  gpunet_sim_threadIdx.y, gpunet_sim_threadIdx.z);
}

// The running thread fails: record the message and leave for good.
[[noreturn]] void fail(const std::string& what) {
    if (!S.failed) {
        S.failed = true;
        S.msg = where_thread() + ": " + what;
    }
    Thread& th = S.t[S.cur];
    th.st = kFailed;
    switch_to_scheduler(th.w);
    __builtin_trap();  // a failed thread is never resumed
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || strcmp(f1, f2) == 0);
}

void make_ready(int tid) {
    S.t[tid].st = kReady;
    S.ready[(S.rhead + S.rcount) & (kMaxThreads - 1)] = tid;
    ++S.rcount;
}

// The running thread waits until someone makes it ready.
inline __attribute__((always_inline)) void park(State why) {
    Thread& th = S.t[S.cur];
    th.st = why;
    if (S.rcount && !S.failed) switch_to_ready(th.w);
    else switch_to_scheduler(th.w);
}

const char* warp_op_name(int kind) {
    switch (kind) {
        case GPUNET_SIM_SHFL_IDX: return "__shfl_sync";
        case GPUNET_SIM_SHFL_UP: return "__shfl_up_sync";
        case GPUNET_SIM_SHFL_DOWN: return "__shfl_down_sync";
        case GPUNET_SIM_SHFL_BFLY: return "__shfl_xor_sync";
        case GPUNET_SIM_SYNCWARP: return "__syncwarp";
        default: return "__ballot_sync/__any_sync/__all_sync";
    }
}

const char* barrier_name(int op) {
    static const char* names[] = {"__syncthreads()", "__syncthreads_count()", "__syncthreads_and()",
                                  "__syncthreads_or()"};
    return names[op & 3];
}

std::string lanes(unsigned int m) {
    std::string s;
    for (int l = 0; l < 32; ++l) {
        if (!(m >> l & 1u)) continue;
        int e = l;
        while (e + 1 < 32 && (m >> (e + 1) & 1u)) ++e;
        if (!s.empty()) s += ",";
        s += e == l ? format("%d", l) : format("%d-%d", l, e);
        l = e;
    }
    return s;
}

// Nothing can run and some threads have not exited: say who waits where.
std::string deadlock_report() {
    int at_bar = 0, at_warp = 0;
    for (int i = 0; i < S.n; ++i) {
        at_bar += S.t[i].st == kBarrier;
        at_warp += S.t[i].st == kWarp;
    }
    std::string m = where_block() + format(" (%d threads) deadlocked:", S.n);
    if (at_bar)
        m += format(" %d thread(s) wait at %s at %s:%d, which %d exited thread(s)%s never reach;",
                    at_bar, barrier_name(S.bar_op), base_name(S.bar_file), S.bar_line, S.exited,
                    at_warp ? " and the threads waiting in warp operations" : "");
    for (int w = 0; w < (S.n + 31) / 32; ++w) {
        for (const Group& g : S.groups[w]) {
            unsigned int exited = 0, barrier = 0, other = 0;
            const unsigned int missing = g.mask & ~g.arrived;
            for (int l = 0; l < 32; ++l) {
                if (!(missing >> l & 1u)) continue;
                const State st = S.t[w * 32 + l].st;
                if (st == kExited) exited |= 1u << l;
                else if (st == kBarrier) barrier |= 1u << l;
                else other |= 1u << l;
            }
            m += format(" warp %d: lanes %s wait in %s at %s:%d (mask 0x%08x);", w,
                        lanes(g.arrived).c_str(), warp_op_name(g.kind), base_name(g.file), g.line,
                        g.mask);
            if (exited) m += format(" lanes %s exited;", lanes(exited).c_str());
            if (barrier) m += format(" lanes %s wait at %s;", lanes(barrier).c_str(), barrier_name(S.bar_op));
            if (other) m += format(" lanes %s wait in another warp operation;", lanes(other).c_str());
        }
    }
    if (!m.empty() && m.back() == ';') m.pop_back();
    return m;
}

// ---------------------------------------------------------------------------------------
// The scheduler of one block
// ---------------------------------------------------------------------------------------
void reset_block(int n) {
    S.n = n;
    for (int i = 0; i < n; ++i) {
        S.t[i].st = kUnstarted;
        S.t[i].w = nullptr;
    }
    for (int w = 0; w < (n + 31) / 32; ++w) {
        S.groups[w].clear();
        S.amask[w].arrived = 0;
    }
    S.rhead = S.rcount = 0;
    S.next = 0;
    S.exited = 0;
    S.bar_count = 0;
    S.cur = -1;
}

// Give back the workers of a failed block: their stacks hold frames never to be resumed.
void abandon_block() {
    for (int i = 0; i < S.n; ++i) {
        Thread& th = S.t[i];
        if (th.w && th.st != kExited && th.st != kUnstarted) {
            init_context(th.w);
            S.spare.push_back(th.w);
        }
        th.w = nullptr;
    }
}

bool settle_activemasks();

// Runs the block; false when it failed (S.msg says why).
bool run_block() {
    for (;;) {
        if (S.failed) {
            abandon_block();
            return false;
        }
        if (S.rcount) {
            switch_to_worker(S.t[run_next_ready()].w);
        } else if (S.next < S.n) {
            Worker* w;
            if (!S.spare.empty()) {
                w = S.spare.back();
                S.spare.pop_back();
            } else {
                w = new_worker();
                if (!w) {
                    S.failed = true;
                    S.msg = where_block() + ": out of memory for the stacks of its threads";
                    continue;
                }
            }
            const int tid = S.next++;
            S.t[tid].st = kRunning;
            S.t[tid].w = w;
            w->tid = tid;
            set_indices(tid);
            switch_to_worker(w);
        } else if (S.exited == S.n) {
            return true;
        } else if (settle_activemasks()) {
            continue;
        } else {
            S.failed = true;
            S.msg = deadlock_report();
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// A worker: runs thread after thread; parks between them when the scheduler has other work.
// ---------------------------------------------------------------------------------------
extern "C" void gpunet_sim_worker_main(Worker* w) {
#if GPUNET_SIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &S.main_lo, &S.main_size);
#endif
    for (;;) {
        S.thunk(S.args);
        Thread& th = S.t[w->tid];
        th.st = kExited;
        th.w = nullptr;
        ++S.exited;
        if (S.rcount == 0 && S.next < S.n && !S.failed) {
            // Nothing to resume: start the next thread on this stack without a switch.
            const int tid = S.next++;
            S.t[tid].st = kRunning;
            S.t[tid].w = w;
            w->tid = tid;
            set_indices(tid);
            continue;
        }
        S.spare.push_back(w);
        // Resumed (by the scheduler) with w->tid set to a new thread.
        if (S.rcount && !S.failed) switch_to_ready(w);
        else switch_to_scheduler(w);
    }
}

extern "C" int gpunet_sim_barrier(int op, int pred, const char* file, int line) {
    if (S.bar_count == 0) {
        S.bar_file = file;
        S.bar_line = line;
        S.bar_op = op;
        S.bar_acc = op == 2 ? 1 : 0;
    } else if (!same_site(file, line, S.bar_file, S.bar_line) || op != S.bar_op) {
        fail(format("%s at %s:%d while other threads wait at %s at %s:%d (a barrier must be "
                    "reached by every thread of the block at the same place)",
                    barrier_name(op), base_name(file), line, barrier_name(S.bar_op),
                    base_name(S.bar_file), S.bar_line));
    }
    if (op == 1) S.bar_acc += pred != 0;
    else if (op == 2) S.bar_acc &= pred != 0;
    else if (op == 3) S.bar_acc |= pred != 0;
    if (++S.bar_count == S.n) {
        const int result = S.bar_acc;
        S.bar_count = 0;
        for (int i = 0; i < S.n; ++i) {
            if (S.t[i].st == kBarrier) {
                S.t[i].out = static_cast<unsigned long long>(result);
                make_ready(i);
            }
        }
        return result;
    }
    park(kBarrier);
    return static_cast<int>(S.t[S.cur].out);
}

// The failures of gpunet_sim_warp, out of line: its common path (a lane that arrives and
// parks) then keeps a small stack frame, which matters with a block's worth of fibers
// switching at every warp operation.
namespace {
[[noreturn]] __attribute__((noinline, cold)) void warp_fail_lane(int kind, unsigned int mask,
                                                                 int lane, const char* file,
                                                                 int line) {
    fail(format("%s at %s:%d: mask 0x%08x does not include the calling lane %d",
                warp_op_name(kind), base_name(file), line, mask, lane));
}

[[noreturn]] __attribute__((noinline, cold)) void warp_fail_exist(int kind, unsigned int mask,
                                                                  unsigned int exist,
                                                                  const char* file, int line) {
    fail(format("%s at %s:%d: mask 0x%08x names lanes %s, which do not exist in a block of "
                "%d threads", warp_op_name(kind), base_name(file), line, mask,
                lanes(mask & ~exist).c_str(), S.n));
}

[[noreturn]] __attribute__((noinline, cold)) void warp_fail_group(int kind, unsigned int mask,
                                                                  const Group& x,
                                                                  const char* file, int line) {
    fail(format("%s at %s:%d with mask 0x%08x while lanes %s wait in %s at %s:%d with mask "
                "0x%08x (the lanes of a mask must meet in the same warp operation)",
                warp_op_name(kind), base_name(file), line, mask, lanes(x.arrived).c_str(),
                warp_op_name(x.kind), base_name(x.file), x.line, x.mask));
}

[[noreturn]] __attribute__((noinline, cold)) void warp_fail_src(int kind, unsigned int mask,
                                                                int l, int src,
                                                                const char* file, int line) {
    fail(format("%s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x",
                warp_op_name(kind), base_name(file), line, l, src, mask));
}

// The last lane of the mask arrived: every participant's result (lanes in increasing
// order, visiting only the mask's bits); the others become ready in lane order.
__attribute__((noinline)) void complete_warp_op(int kind, unsigned int mask, int lane, int base,
                                                std::vector<Group>& gs, Group* g,
                                                const char* file, int line) {
    if (kind <= GPUNET_SIM_SHFL_BFLY) {
        for (unsigned int m = mask; m; m &= m - 1) {
            const int l = __builtin_ctz(m);
            Thread& th = S.t[base + l];
            if (!(mask >> th.src & 1u)) warp_fail_src(kind, mask, l, th.src, file, line);
            th.out = S.t[base + th.src].in;
        }
    } else {
        unsigned int ballot = 0;
        for (unsigned int m = mask; m; m &= m - 1) {
            const int l = __builtin_ctz(m);
            if (S.t[base + l].in) ballot |= 1u << l;
        }
        for (unsigned int m = mask; m; m &= m - 1) S.t[base + __builtin_ctz(m)].out = ballot;
    }
    gs.erase(gs.begin() + (g - gs.data()));
    for (unsigned int m = mask & ~(1u << lane); m; m &= m - 1) make_ready(base + __builtin_ctz(m));
}
}  // namespace

extern "C" void gpunet_sim_warp(int kind, unsigned int mask, unsigned long long value, int b, int c,
                                unsigned long long* out, const char* file, int line) {
    const int tid = S.cur;
    const int warp = tid >> 5, lane = tid & 31, base = tid & ~31;
    const int nlanes = S.n - base < 32 ? S.n - base : 32;
    const unsigned int exist = nlanes == 32 ? 0xffffffffu : (1u << nlanes) - 1u;
    if (__builtin_expect(!(mask >> lane & 1u), 0)) warp_fail_lane(kind, mask, lane, file, line);
    if (__builtin_expect((mask & ~exist) != 0, 0)) warp_fail_exist(kind, mask, exist, file, line);
    std::vector<Group>& gs = S.groups[warp];
    Group* g = nullptr;
    for (Group& x : gs) {
        if (!(x.mask & mask)) continue;
        if (x.mask != mask || x.kind != kind || !same_site(file, line, x.file, x.line))
            warp_fail_group(kind, mask, x, file, line);
        g = &x;
        break;
    }
    if (!g) {
        gs.push_back(Group{mask, 0u, kind, file, line});
        g = &gs.back();
    }
    // PTX shfl.sync: segment mask and clamp from c, source lane j, or the own lane when j
    // falls outside the segment.
    int src = lane;
    if (kind <= GPUNET_SIM_SHFL_BFLY) {
        const int segmask = (c >> 8) & 31;
        const int max_lane = (lane & segmask) | (c & 31 & ~segmask);
        const int min_lane = lane & segmask;
        int j;
        bool ok;
        switch (kind) {
            case GPUNET_SIM_SHFL_UP: j = lane - b; ok = j >= max_lane; break;
            case GPUNET_SIM_SHFL_DOWN: j = lane + b; ok = j <= max_lane; break;
            case GPUNET_SIM_SHFL_BFLY: j = lane ^ b; ok = j <= max_lane; break;
            default: j = min_lane | (b & 31 & ~segmask); ok = j <= max_lane; break;
        }
        src = ok ? j : lane;
    }
    Thread& me = S.t[tid];
    me.in = value;
    me.src = src;
    g->arrived |= 1u << lane;
    if (g->arrived != g->mask) {
        park(kWarp);
        *out = S.t[S.cur].out;
        return;
    }
    complete_warp_op(kind, mask, lane, base, gs, g, file, line);
    *out = me.out;
}

// __activemask(): the lanes of the warp that execute this call together. Threads run one
// at a time, so the call waits until every other lane of the warp has either arrived at
// the same call or can no longer arrive before something else happens (it exited, or waits
// at a barrier or another warp operation, or nothing else can run): the result is the
// lanes that arrived.
namespace {
unsigned int exited_lanes(int base) {
    unsigned int m = 0;
    for (int l = 0; l < 32 && base + l < S.n; ++l)
        if (S.t[base + l].st == kExited) m |= 1u << l;
    return m;
}

// Every arrived lane gets the mask of arrived lanes; all but `running` (the caller, or -1)
// become ready.
void complete_activemask(int warp, int running) {
    AMask& a = S.amask[warp];
    for (int l = 0; l < 32; ++l) {
        if (!(a.arrived >> l & 1u)) continue;
        S.t[warp * 32 + l].out = a.arrived;
        if (warp * 32 + l != running) make_ready(warp * 32 + l);
    }
    a.arrived = 0;
}

// Called by the scheduler when nothing can run: settle every pending __activemask().
bool settle_activemasks() {
    bool any = false;
    for (int w = 0; w < (S.n + 31) / 32; ++w) {
        if (S.amask[w].arrived) {
            complete_activemask(w, -1);
            any = true;
        }
    }
    return any;
}
}  // namespace

extern "C" unsigned int gpunet_sim_activemask(const char* file, int line) {
    const int tid = S.cur, warp = tid >> 5, lane = tid & 31, base = tid & ~31;
    const int nlanes = S.n - base < 32 ? S.n - base : 32;
    const unsigned int exist = nlanes == 32 ? 0xffffffffu : (1u << nlanes) - 1u;
    AMask& a = S.amask[warp];
    if (a.arrived && !same_site(file, line, a.file, a.line)) complete_activemask(warp, -1);
    if (!a.arrived) {
        a.file = file;
        a.line = line;
    }
    a.arrived |= 1u << lane;
    if ((a.arrived | exited_lanes(base)) == exist) {
        const unsigned int m = a.arrived;
        complete_activemask(warp, tid);
        return m;
    }
    park(kWarp);
    return static_cast<unsigned int>(S.t[S.cur].out);
}

extern "C" void gpunet_sim_trap(const char* what, const char* file, int line) {
    fail(format("%s at %s:%d", what, base_name(file), line));
}

// ---------------------------------------------------------------------------------------
// A fault in kernel code (a wild pointer, a fiber's stack overflowing into its guard page)
// fails the launch like CUDA's illegal address error instead of killing the process. The
// handler runs on its own stack, records the message without allocating, and leaves the
// faulting fiber for the scheduler, which abandons the block. Faults outside kernel code
// go to the previous handler. Not under AddressSanitizer, which reports them itself.
// ---------------------------------------------------------------------------------------
namespace {
#if !GPUNET_SIM_ASAN
struct sigaction old_segv, old_bus;
stack_t old_altstack;
alignas(16) char fault_stack[64 * 1024];
char fault_msg[512];

void on_fault(int sig, siginfo_t* info, void*) {
    if (!S.in_kernel || S.cur < 0 || !S.t[S.cur].w) {
        sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, nullptr);
        return;  // the faulting instruction runs again, under the previous handler
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);  // the handler is left without returning
    snprintf(fault_msg, sizeof fault_msg,
             "kernel '%s' block (%u, %u, %u) thread (%u, %u, %u): illegal memory access at "
             "address %p (%s)", S.name, gpunet_sim_blockIdx.x, gpunet_sim_blockIdx.y,
             gpunet_sim_blockIdx.z, gpunet_sim_threadIdx.x, gpunet_sim_threadIdx.y,
             gpunet_sim_threadIdx.z, info->si_addr, sig == SIGSEGV ? "SIGSEGV" : "SIGBUS");
    S.failed = true;
    S.msg.clear();  // filled from fault_msg by the scheduler side
    Thread& th = S.t[S.cur];
    th.st = kFailed;
    switch_to_scheduler(th.w);
    __builtin_trap();
}

void install_fault_handler() {
    fault_msg[0] = 0;
    stack_t ss;
    ss.ss_sp = fault_stack;
    ss.ss_size = sizeof fault_stack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_altstack);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
}

void remove_fault_handler() {
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    old_altstack.ss_flags &= SS_DISABLE;
    sigaltstack(&old_altstack, nullptr);
    if (fault_msg[0]) S.msg = fault_msg;
}
#else
void install_fault_handler() {}
void remove_fault_handler() {}
#endif
}  // namespace

extern "C" int gpunet_sim_run(const gpunet_sim_launch* l, void (*thunk)(void**)) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    auto error = [&](const std::string& m) {
        snprintf(l->err, l->errlen, "%s", m.c_str());
        return 1;
    };
    const unsigned bx = l->block[0], by = l->block[1], bz = l->block[2];
    const unsigned long long n = 1ull * bx * by * bz;
    if (n == 0 || n > kMaxThreads)
        return error(format("kernel '%s': a block of %llu threads (at most %d)", l->name, n, kMaxThreads));
    if (l->shared_mem > kDynSmem)
        return error(format("kernel '%s': %llu bytes of dynamic shared memory (at most %zu)",
                            l->name, l->shared_mem, kDynSmem));
    S.thunk = thunk;
    S.args = l->args;
    S.name = l->name;
    S.failed = false;
    S.msg.clear();
    gpunet_sim_blockDim = dim3(bx, by, bz);
    gpunet_sim_gridDim = dim3(l->grid[0], l->grid[1], l->grid[2]);
#if GPUNET_SIM_ASAN
    // Reading beyond the launch's dynamic shared memory is an error.
    const size_t used = (l->shared_mem + 7) & ~size_t(7);
    __asan_poison_memory_region(gpunet_sim_dynamic_smem + used, kDynSmem - used);
#endif
    bool ok = true;
    install_fault_handler();
    for (unsigned z = 0; ok && z < l->grid[2]; ++z) {
        for (unsigned y = 0; ok && y < l->grid[1]; ++y) {
            for (unsigned x = 0; ok && x < l->grid[0]; ++x) {
                gpunet_sim_blockIdx = uint3{x, y, z};
#if GPUNET_SIM_ASAN
                // Shared memory starts undefined: NaN bytes make a read before write show.
                memset(gpunet_sim_dynamic_smem, 0xff, l->shared_mem);
#endif
                reset_block(static_cast<int>(n));
                ok = run_block();
            }
        }
    }
#if GPUNET_SIM_ASAN
    __asan_unpoison_memory_region(gpunet_sim_dynamic_smem, kDynSmem);
#endif
    remove_fault_handler();
    S.thunk = nullptr;
    S.args = nullptr;
    if (!ok) return error(S.msg);
    return 0;
}

extern "C" int gpunet_sim_abi_version(void) { return 1; }
