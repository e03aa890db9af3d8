/*
 * lrpm-host's C shim. See lrpm_shim.h for the contract and docs/architecture.md for why
 * this split exists (zend_try is setjmp/longjmp; a longjmp across Rust
 * frames is undefined behaviour).
 */
#ifndef _GNU_SOURCE
# define _GNU_SOURCE /* memmem */
#endif
#include "lrpm_shim.h"

#include <main/php.h>
#include <main/SAPI.h>
#include <main/php_main.h>
#include <main/php_variables.h>
#include <main/php_ini.h>
#include <main/php_streams.h>
#include <main/php_version.h>
#include <Zend/zend_ini.h>
#include <Zend/zend_signal.h>
#include <Zend/zend_exceptions.h>
#include <Zend/zend_constants.h>
#include <Zend/zend_gc.h>
#include <Zend/zend_alloc_sizes.h>
#include <Zend/zend_extensions.h>

#include <errno.h>
#include <dirent.h>
#include <ext/random/php_random.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ------------------------------------------------------------------ */
/* Per-process state of a child. Set once after fork, read by host     */
/* functions; signal handlers only store into the sig_atomic_t flags.  */
/* ------------------------------------------------------------------ */

static volatile sig_atomic_t stop_requested = 0;
static volatile sig_atomic_t reload_requested = 0;
static const lrpm_child_spec *current_spec = NULL;
/* Set in any process the worker forks itself (pcntl_fork): such a copy must
 * leave the worker loop instead of running a second copy of it. */
static volatile sig_atomic_t forked_by_worker = 0;

static void on_fork_in_child(void) { forked_by_worker = 1; }

/* When the first stop request arrived (CLOCK_MONOTONIC, ns; 0: none yet). */
static volatile long long stop_requested_at_ns = 0;

/* Called from the stop handlers: clock_gettime is async-signal-safe. */
static void note_stop_request(void)
{
    if (!stop_requested_at_ns) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        stop_requested_at_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    stop_requested = 1;
}

static void on_stop_signal(int signo) { (void)signo; note_stop_request(); }
static void on_reload_signal(int signo) { (void)signo; reload_requested = 1; }

/* ------------------------------------------------------------------ */
/* User SIGTERM/SIGINT handlers (pcntl_signal)                         */
/* ------------------------------------------------------------------ */

/*
 * pcntl_signal(SIGTERM, $callable) replaces the host's handler (through
 * zend_sigaction): the stop flag would never be set and the worker would
 * cycle until SIGKILL. The shim wraps PHP's pcntl_signal(): after the
 * original has installed its action for SIGTERM/SIGINT, the shim puts its
 * own handler in front, which sets the stop flag and then calls the action
 * pcntl installed (zend_signal's deferring handler, which queues the
 * user's callable), with the same arguments. For SIG_IGN and SIG_DFL only
 * the stop flag is set: the host's graceful stop applies.
 */
static zif_handler original_pcntl_signal = NULL;
static struct sigaction chained_action[NSIG];
static volatile sig_atomic_t chained_active[NSIG];

/* This process's shared page, or NULL: also NULL in a process the worker
 * forked itself, which inherits the mapping but must not write the
 * worker's facts into it. */
static lrpm_shared_page *own_shared_page(void)
{
    return current_spec && !forked_by_worker ? current_spec->shared_page : NULL;
}

static void mark_shared_flag(uint64_t bit)
{
    lrpm_shared_page *page = own_shared_page();
    if (page) {
        __atomic_fetch_or(&page->flags, bit, __ATOMIC_RELAXED);
    }
}

static void on_stop_signal_chained(int signo, siginfo_t *info, void *context)
{
    note_stop_request();
    if (signo <= 0 || signo >= NSIG || !chained_active[signo]) return;
    const struct sigaction *next = &chained_action[signo];
    if (next->sa_flags & SA_SIGINFO) {
        next->sa_sigaction(signo, info, context);
    } else if (next->sa_handler != SIG_DFL && next->sa_handler != SIG_IGN) {
        next->sa_handler(signo);
    }
}

/* Returns false (errno set) when a sigaction call failed. */
static bool take_over_stop_signal(int signo)
{
    struct sigaction installed;
    if (sigaction(signo, NULL, &installed) != 0) return false;
    if ((installed.sa_flags & SA_SIGINFO) && installed.sa_sigaction == on_stop_signal_chained) return true;
    /* What pcntl asked zend_signal for: a callable (pcntl's own C handler),
     * SIG_IGN or SIG_DFL. */
    struct sigaction requested;
    memset(&requested, 0, sizeof(requested));
    zend_sigaction(signo, NULL, &requested);
    bool chain = requested.sa_handler != SIG_DFL && requested.sa_handler != SIG_IGN
        && installed.sa_handler != SIG_DFL && installed.sa_handler != SIG_IGN;

    chained_active[signo] = 0;
    chained_action[signo] = installed;
    struct sigaction ours;
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = on_stop_signal_chained;
    if (chain) {
        /* Keep pcntl's SA_RESTART choice (restart_syscalls) and the mask
         * zend_signal's handler expects to run with. */
        ours.sa_flags = SA_SIGINFO | (installed.sa_flags & (SA_RESTART | SA_ONSTACK));
        ours.sa_mask = installed.sa_mask;
    } else {
        ours.sa_flags = SA_SIGINFO;
        sigemptyset(&ours.sa_mask);
    }
    if (sigaction(signo, &ours, NULL) != 0) return false;
    chained_active[signo] = chain ? 1 : 0;
    return true;
}

static PHP_FUNCTION(lrpm_pcntl_signal)
{
    original_pcntl_signal(INTERNAL_FUNCTION_PARAM_PASSTHRU);
    if (EG(exception) || Z_TYPE_P(return_value) != IS_TRUE || ZEND_NUM_ARGS() < 1) return;
    /* The original parsed the arguments: the first one is the signal. */
    zend_long signo = zval_get_long(ZEND_CALL_ARG(execute_data, 1));
    if (signo != SIGTERM && signo != SIGINT) return;
    mark_shared_flag(signo == SIGTERM ? LRPM_FLAG_USER_SIGTERM_HANDLER : LRPM_FLAG_USER_SIGINT_HANDLER);
    if (!take_over_stop_signal((int)signo)) {
        php_error_docref(NULL, E_WARNING, "lrpm-host could not keep its stop handler for signal %d: %s",
                         (int)signo, strerror(errno));
    }
}

/* Called in the child once the request started (the function table is
 * this process's own copy after fork). */
static void wrap_pcntl_signal(void)
{
    zend_function *fn = zend_hash_str_find_ptr(CG(function_table), "pcntl_signal", sizeof("pcntl_signal") - 1);
    if (fn && fn->type == ZEND_INTERNAL_FUNCTION && fn->internal_function.handler != zif_lrpm_pcntl_signal) {
        original_pcntl_signal = fn->internal_function.handler;
        fn->internal_function.handler = zif_lrpm_pcntl_signal;
    }
}

static bool parent_changed(void)
{
    return current_spec && current_spec->parent_pid > 0 && getppid() != current_spec->parent_pid;
}

/* ------------------------------------------------------------------ */
/* Process title                                                      */
/* ------------------------------------------------------------------ */

static char *title_area = NULL;
static size_t title_area_len = 0;
static char *current_title = NULL;

void lrpm_title_init(void)
{
    /* Fields 48..51 of /proc/self/stat: arg_start arg_end env_start env_end. */
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* comm (field 2) may contain spaces; fields restart after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return;
    p += 2; /* field 3: the one-letter state, not a number */
    while (*p && *p != ' ') p++;
    unsigned long long v[52] = {0};
    for (int field = 4; field <= 51 && *p; field++) {
        v[field] = strtoull(p, &p, 10);
        while (*p == ' ') p++;
    }
    unsigned long long arg_start = v[48], env_end = v[51], env_start = v[50];
    if (!arg_start || !env_end || env_end <= arg_start) return;

    /* Move environ strings that live inside the area to the heap. */
    for (char **e = environ; e && *e; e++) {
        unsigned long long addr = (unsigned long long)(uintptr_t)*e;
        if (addr >= env_start && addr < env_end) {
            char *copy = strdup(*e);
            if (!copy) return;
            *e = copy;
        }
    }
    title_area = (char *)(uintptr_t)arg_start;
    title_area_len = (size_t)(env_end - arg_start);
}

void lrpm_title_set(const char *title)
{
    if (!title) return;
    char *copy = strdup(title);
    if (copy) {
        free(current_title);
        current_title = copy;
    }
    if (!title_area || title_area_len < 2) return;
    size_t len = strlen(title);
    if (len > title_area_len - 1) len = title_area_len - 1;
    memcpy(title_area, title, len);
    memset(title_area + len, 0, title_area_len - len);
}

const char *lrpm_php_version(void) { return PHP_VERSION; }

/* Set once lrpm_boot() succeeded: before that PG(memory_limit) is a zeroed
 * global, not a setting. */
static bool module_started = false;

long long lrpm_memory_limit_bytes(void)
{
    if (!module_started) return -1;
    /* Any negative limit disables the check (zend_alloc compares as size_t). */
    return PG(memory_limit) < 0 ? -1 : (long long)PG(memory_limit);
}

/* ------------------------------------------------------------------ */
/* Host functions visible to PHP                                       */
/* ------------------------------------------------------------------ */

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_should_stop, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_should_stop)
{
    ZEND_PARSE_PARAMETERS_NONE();
    RETURN_BOOL(stop_requested || parent_changed());
}

/* Cyclic garbage is collected between cycles at most this often: calling
 * a method makes the worker object a possible root, so collecting after
 * every cycle would walk the worker's whole object graph (a framework's
 * container) every cycle. */
#define GC_BETWEEN_CYCLES_INTERVAL_NS 1000000000LL

static long long last_gc_between_cycles_ns = 0;

static long long monotonic_coarse_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* When the running cycle began (CLOCK_MONOTONIC ns), 0 between cycles; kept
 * here too so that the end of a cycle does not read the shared page back. */
static uint64_t cycle_began_ns = 0;

/* Only with a shared page: the worker command's tests and any child without
 * one pay no clock read. CLOCK_MONOTONIC is a vDSO call, no syscall, so the
 * supervisor can compare the page with its own clock_gettime(). */
static void note_cycle_start(void)
{
    lrpm_shared_page *page = own_shared_page();
    if (!page) return;
    cycle_began_ns = monotonic_ns();
    __atomic_store_n(&page->cycle_started_ns, cycle_began_ns, __ATOMIC_RELEASE);
}

/*
 * Bounded waits once a stop is pending. PHP's stream layer (fread/fgets on
 * sockets, and what is built on it: phpredis, mysqlnd, ...) polls again
 * with its whole timeout after a signal interrupts poll(), so a worker
 * blocked in such a read would sit out the stop until SIGKILL. The binary
 * exports this poll() (build.rs), so libphp's and its extensions' calls
 * land here: before a stop request it is plain poll(); after one, every
 * wait ends by the stop's grace deadline (half the shutdown timeout), where
 * it reports a timeout. Work that answers in time finishes normally; a read
 * that would outlast the grace fails as a timed-out read, which the worker
 * can handle before the SIGKILL that would otherwise come.
 */
/* With a stop pending and a grace set: nanoseconds left until the grace
 * deadline (0 once it passed); -1 otherwise (no stop, or no grace: the
 * worker command without a job, the supervisor itself). */
static long long stop_grace_left_ns(void)
{
    if (!(stop_requested && stop_requested_at_ns && current_spec && current_spec->stop_grace_ms >= 0)) return -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long now_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    long long deadline_ns = stop_requested_at_ns + current_spec->stop_grace_ms * 1000000LL;
    return deadline_ns > now_ns ? deadline_ns - now_ns : 0;
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    long long left_ns = stop_grace_left_ns();
    if (left_ns >= 0) {
        long long left_ms = (left_ns + 999999) / 1000000;
        if (timeout < 0 || timeout > left_ms) timeout = (int)left_ms;
    }
    struct timespec wait;
    struct timespec *wait_for = NULL;
    if (timeout >= 0) {
        wait.tv_sec = timeout / 1000;
        wait.tv_nsec = (long)(timeout % 1000) * 1000000L;
        wait_for = &wait;
    }
    return ppoll(fds, nfds, wait_for, NULL);
}

/*
 * Sleeps and select() get the same bound as poll(): a worker whose cycle
 * begins a long sleep after the stop signal arrived (the signal interrupts
 * only a sleep already in progress) would otherwise sit it out until its
 * SIGKILL. Before a stop these are the C library's own: nanosleep() and
 * select() as system calls, usleep() and sleep() on top of nanosleep().
 * A sleep cut at the grace deadline reports an interruption (EINTR, and
 * what was left), as a signal would have. Exported from the binary
 * (build.rs), like poll().
 */
int nanosleep(const struct timespec *request, struct timespec *remaining)
{
    long long left_ns = stop_grace_left_ns();
    if (request && left_ns >= 0) {
        long long asked_ns = (long long)request->tv_sec * 1000000000LL + request->tv_nsec;
        if (asked_ns > left_ns) {
            struct timespec capped = {(time_t)(left_ns / 1000000000LL), (long)(left_ns % 1000000000LL)};
            while (clock_nanosleep(CLOCK_MONOTONIC, 0, &capped, &capped) == EINTR) {}
            if (remaining) {
                long long rest_ns = asked_ns - left_ns;
                remaining->tv_sec = (time_t)(rest_ns / 1000000000LL);
                remaining->tv_nsec = (long)(rest_ns % 1000000000LL);
            }
            errno = EINTR;
            return -1;
        }
    }
    long result = syscall(SYS_nanosleep, request, remaining);
    return result == 0 ? 0 : -1;
}

int usleep(useconds_t microseconds)
{
    struct timespec wait = {(time_t)(microseconds / 1000000), (long)(microseconds % 1000000) * 1000L};
    return nanosleep(&wait, NULL);
}

unsigned int sleep(unsigned int seconds)
{
    struct timespec wait = {(time_t)seconds, 0}, rest = {0, 0};
    if (nanosleep(&wait, &rest) == 0) return 0;
    return (unsigned int)rest.tv_sec + (rest.tv_nsec > 0 ? 1 : 0);
}

int select(int nfds, fd_set *readfds, fd_set *writefds, fd_set *exceptfds, struct timeval *timeout)
{
    /* As the select system call (which not every architecture has): the
     * wait through pselect6, and what is left written back to *timeout. */
    struct timespec wait;
    struct timespec *wait_for = NULL;
    if (timeout) {
        wait.tv_sec = timeout->tv_sec;
        wait.tv_nsec = (long)timeout->tv_usec * 1000L;
        wait_for = &wait;
    }
    long long left_ns = stop_grace_left_ns();
    if (left_ns >= 0 && (!wait_for || (long long)wait.tv_sec * 1000000000LL + wait.tv_nsec > left_ns)) {
        wait.tv_sec = (time_t)(left_ns / 1000000000LL);
        wait.tv_nsec = (long)(left_ns % 1000000000LL);
        wait_for = &wait;
    }
    int result = (int)syscall(SYS_pselect6, nfds, readfds, writefds, exceptfds, wait_for, NULL);
    if (timeout && wait_for) {
        timeout->tv_sec = wait.tv_sec;
        timeout->tv_usec = (suseconds_t)(wait.tv_nsec / 1000L);
    }
    return result;
}

/* The worker loop's check between cycles, in C because it runs millions of
 * times a second for a busy worker: no syscall, no array. The parent's death
 * needs no check here: farm workers have PDEATHSIG and the worker command
 * has no parent to lose. Garbage cycles are collected once a second when
 * there are possible roots, so a slow-cycling worker does not sit on its
 * garbage until PHP's 10,000-root threshold. */
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_next_cycle, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_next_cycle)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (stop_requested || forked_by_worker) {
        RETURN_FALSE;
    }
    zend_gc_status gc;
    zend_gc_get_status(&gc);
    if (gc.num_roots > 0) {
        long long now = monotonic_coarse_ns();
        if (now - last_gc_between_cycles_ns >= GC_BETWEEN_CYCLES_INTERVAL_NS) {
            last_gc_between_cycles_ns = now;
            zend_gc_collect_cycles();
        }
    }
    /* After the collection: it belongs to the time between cycles. */
    note_cycle_start();
    RETURN_TRUE;
}

/* Set by Lrpm\recycle(); the worker loop ends at the next check. */
static bool recycle_asked = false;

/* A recycle the runner should carry out now: a pending stop ends the worker
 * as a stop (exit 0), which is what whoever sent it waits for. */
static bool recycle_due(void)
{
    return recycle_asked && !stop_requested;
}

/* How often the runner publishes OPcache's figures (opcache_get_status()
 * takes OPcache's lock, so not after every cycle); timed here with the
 * coarse clock, which costs no system call and no PHP call per cycle. */
#define OPCACHE_PUBLISH_INTERVAL_NS 10000000000LL

static long long opcache_published_at_ns = 0;

/* Called by the runner right after $worker->cycle() returned: records the
 * cycle in the shared page (store order: lrpm_shim.h) and says what is
 * due, so the per-cycle checks cost one call: 0 once the worker asked for
 * a recycle, 2 when OPcache's figures are due for publishing, else 1. */
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_cycle_done, 0, 0, IS_LONG, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_cycle_done)
{
    ZEND_PARSE_PARAMETERS_NONE();
    lrpm_shared_page *page = own_shared_page();
    if (page && cycle_began_ns) {
        uint64_t now = monotonic_ns();
        __atomic_store_n(&page->last_cycle_ns, now > cycle_began_ns ? now - cycle_began_ns : 0, __ATOMIC_RELAXED);
        __atomic_store_n(&page->heap_bytes, (uint64_t)zend_memory_usage(1), __ATOMIC_RELAXED);
        __atomic_store_n(&page->peak_heap_bytes, (uint64_t)zend_memory_peak_usage(1), __ATOMIC_RELAXED);
        __atomic_store_n(&page->cycle_started_ns, 0, __ATOMIC_RELAXED);
        __atomic_fetch_add(&page->cycles, 1, __ATOMIC_RELEASE);
    }
    cycle_began_ns = 0;
    if (recycle_due()) RETURN_LONG(0);
    long long now = monotonic_coarse_ns();
    if (now - opcache_published_at_ns >= OPCACHE_PUBLISH_INTERVAL_NS) {
        opcache_published_at_ns = now;
        RETURN_LONG(2);
    }
    RETURN_LONG(1);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_recycle, 0, 0, IS_VOID, 0)
ZEND_END_ARG_INFO()

/* Lrpm\recycle(): only a flag. Workers act on it after start() and after
 * each cycle; the configuration process never looks. */
static PHP_FUNCTION(lrpm_recycle)
{
    ZEND_PARSE_PARAMETERS_NONE();
    recycle_asked = true;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_recycle_requested, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_recycle_requested)
{
    ZEND_PARSE_PARAMETERS_NONE();
    RETURN_BOOL(recycle_due());
}

/* The runner's reason for the recycle it is about to carry out (exit 75),
 * for the supervisor to read at the reap: the page is only handed out
 * again after that. */
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_set_recycle_reason, 0, 1, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, reason, IS_LONG, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_set_recycle_reason)
{
    zend_long reason;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_LONG(reason)
    ZEND_PARSE_PARAMETERS_END();
    lrpm_shared_page *page = own_shared_page();
    if (page && reason >= 0) {
        __atomic_store_n(&page->recycle_reason, (uint64_t)reason, __ATOMIC_RELEASE);
    }
}

/* OPcache figures for the supervisor, which has no request and so cannot
 * call opcache_get_status() itself. The time goes last, with release: a
 * reader that sees it sees the figures stored before it. */
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_publish_opcache, 0, 4, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, usedBytes, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, freeBytes, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, hits, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, misses, IS_LONG, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_publish_opcache)
{
    zend_long used, free_bytes, hits, misses;
    ZEND_PARSE_PARAMETERS_START(4, 4)
        Z_PARAM_LONG(used)
        Z_PARAM_LONG(free_bytes)
        Z_PARAM_LONG(hits)
        Z_PARAM_LONG(misses)
    ZEND_PARSE_PARAMETERS_END();
    lrpm_shared_page *page = own_shared_page();
    if (!page) return;
    __atomic_store_n(&page->opcache_used_bytes, (uint64_t)(used > 0 ? used : 0), __ATOMIC_RELAXED);
    __atomic_store_n(&page->opcache_free_bytes, (uint64_t)(free_bytes > 0 ? free_bytes : 0), __ATOMIC_RELAXED);
    __atomic_store_n(&page->opcache_hits, (uint64_t)(hits > 0 ? hits : 0), __ATOMIC_RELAXED);
    __atomic_store_n(&page->opcache_misses, (uint64_t)(misses > 0 ? misses : 0), __ATOMIC_RELAXED);
    uint64_t now = monotonic_ns();
    __atomic_store_n(&page->opcache_published_ns, now ? now : 1, __ATOMIC_RELEASE);
}

/* Which job and replica slot this worker runs, set by the runner before
 * the bootstrap; unset (null to PHP) in the configuration process. Copied
 * with malloc: it must outlive every request-bound allocation. */
static char *identity_job_id = NULL;
static size_t identity_job_id_len = 0;
static zend_long identity_slot = 0;

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_set_identity, 0, 2, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, jobId, IS_STRING, 0)
    ZEND_ARG_TYPE_INFO(0, slot, IS_LONG, 0)
ZEND_END_ARG_INFO()

/* Only the first call counts: the runner makes it before any user code
 * runs, so user code cannot make job_id() name another job. */
static PHP_FUNCTION(lrpm_set_identity)
{
    zend_string *job_id;
    zend_long slot;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_STR(job_id)
        Z_PARAM_LONG(slot)
    ZEND_PARSE_PARAMETERS_END();
    if (identity_job_id) return;
    char *copy = malloc(ZSTR_LEN(job_id) + 1);
    if (!copy) {
        zend_throw_error(NULL, "out of memory");
        RETURN_THROWS();
    }
    memcpy(copy, ZSTR_VAL(job_id), ZSTR_LEN(job_id) + 1);
    identity_job_id = copy;
    identity_job_id_len = ZSTR_LEN(job_id);
    identity_slot = slot;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_job_id, 0, 0, IS_STRING, 1)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_job_id)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (!identity_job_id) RETURN_NULL();
    RETURN_STRINGL(identity_job_id, identity_job_id_len);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_slot, 0, 0, IS_LONG, 1)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_slot)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (!identity_job_id) RETURN_NULL();
    RETURN_LONG(identity_slot);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_params, 0, 0, IS_STRING, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_params)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (!current_spec || !current_spec->params_json) {
        RETURN_EMPTY_STRING();
    }
    RETURN_STRING(current_spec->params_json);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_send, 0, 1, _IS_BOOL, 0)
    ZEND_ARG_TYPE_INFO(0, message, IS_STRING, 0)
ZEND_END_ARG_INFO()

/* Writes one frame: 8-byte big-endian length, then the bytes. */
static PHP_FUNCTION(lrpm_send)
{
    zend_string *message;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_STR(message)
    ZEND_PARSE_PARAMETERS_END();
    if (!current_spec || current_spec->message_fd < 0) {
        RETURN_FALSE;
    }
    uint64_t len = ZSTR_LEN(message);
    unsigned char header[8];
    for (int i = 0; i < 8; i++) header[i] = (unsigned char)(len >> (56 - 8 * i));
    const char *chunks[2] = {(const char *)header, ZSTR_VAL(message)};
    size_t sizes[2] = {8, ZSTR_LEN(message)};
    for (int c = 0; c < 2; c++) {
        size_t done = 0;
        while (done < sizes[c]) {
            ssize_t w = write(current_spec->message_fd, chunks[c] + done, sizes[c] - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) RETURN_FALSE;
            done += (size_t)w;
        }
    }
    RETURN_TRUE;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_wait, 0, 1, IS_STRING, 0)
    ZEND_ARG_TYPE_INFO(0, seconds, IS_DOUBLE, 0)
ZEND_END_ARG_INFO()

/*
 * Sleeps until the timeout, a stop signal or a reload signal, whichever
 * comes first; returns "timeout", "stop" or "reload". The signals are
 * blocked while the flags are checked and unblocked atomically by ppoll, so
 * a signal that arrives just before the sleep is never lost.
 */
static PHP_FUNCTION(lrpm_wait)
{
    double seconds;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_DOUBLE(seconds)
    ZEND_PARSE_PARAMETERS_END();

    sigset_t block, previous;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &previous);

    struct timespec now, deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (seconds > 0) {
        deadline.tv_sec += (time_t)seconds;
        deadline.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
    }
    const char *reason = "timeout";
    for (;;) {
        if (stop_requested || parent_changed()) { reason = "stop"; break; }
        if (reload_requested) { reload_requested = 0; reason = "reload"; break; }
        clock_gettime(CLOCK_MONOTONIC, &now);
        struct timespec left;
        left.tv_sec = deadline.tv_sec - now.tv_sec;
        left.tv_nsec = deadline.tv_nsec - now.tv_nsec;
        if (left.tv_nsec < 0) { left.tv_sec--; left.tv_nsec += 1000000000L; }
        if (left.tv_sec < 0) break;
        /* Sleeps the whole interval: a signal ends the sleep, and the
         * supervisor's death kills this process (PDEATHSIG), so there is
         * nothing to poll for. */
        ppoll(NULL, 0, &left, &previous);
    }
    sigprocmask(SIG_SETMASK, &previous, NULL);
    RETURN_STRING(reason);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_cli_set_process_title, 0, 1, _IS_BOOL, 0)
    ZEND_ARG_TYPE_INFO(0, title, IS_STRING, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(cli_set_process_title)
{
    char *title;
    size_t title_len;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_STRING(title, title_len)
    ZEND_PARSE_PARAMETERS_END();
    (void)title_len;
    lrpm_title_set(title);
    RETURN_TRUE;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_cli_get_process_title, 0, 0, IS_STRING, 1)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(cli_get_process_title)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (!current_title) RETURN_NULL();
    RETURN_STRING(current_title);
}


/* ------------------------------------------------------------------ */
/* The zygote: forks workers from a process that ran the bootstrap     */
/* ------------------------------------------------------------------ */

static void child_setup_failed(const lrpm_child_spec *spec, const char *call);

/* What "kind" of process this is, for Lrpm\process_kind(). */
static const char *process_kind = "unknown";

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_set_process_kind, 0, 1, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, kind, IS_STRING, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(lrpm_set_process_kind)
{
    zend_string *kind;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_STR(kind)
    ZEND_PARSE_PARAMETERS_END();
    if (zend_string_equals_literal(kind, "worker")) process_kind = "worker";
    else if (zend_string_equals_literal(kind, "config")) process_kind = "config";
    else if (zend_string_equals_literal(kind, "zygote")) process_kind = "zygote";
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_process_kind, 0, 0, IS_STRING, 0)
ZEND_END_ARG_INFO()

/* "worker", "config" or "zygote": a bootstrap can build what workers share
 * only where it is worth it (not in the configuration process). */
static PHP_FUNCTION(lrpm_process_kind)
{
    ZEND_PARSE_PARAMETERS_NONE();
    RETURN_STRING(process_kind);
}

static void zygote_send(int fd, uint32_t kind, int32_t value, const char *text)
{
    char buffer[sizeof(lrpm_zygote_reply) + 1024];
    lrpm_zygote_reply reply = {kind, value};
    memcpy(buffer, &reply, sizeof(reply));
    size_t len = sizeof(reply);
    if (text) {
        size_t text_len = strlen(text);
        if (text_len > 1024) text_len = 1024;
        memcpy(buffer + len, text, text_len);
        len += text_len;
    }
    while (send(fd, buffer, len, MSG_NOSIGNAL) < 0 && errno == EINTR) {}
}

/* Whether descriptor `fd` carries a lock its copies share after fork():
 * flock() and open-file-description locks (a POSIX fcntl() lock belongs
 * to the process and is not inherited). Linux lists a descriptor's locks
 * in /proc/self/fdinfo. */
static bool holds_shared_lock(int fd)
{
    char path[64], text[4096];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    int info = open(path, O_RDONLY | O_CLOEXEC);
    if (info < 0) return false;
    ssize_t n = read(info, text, sizeof(text) - 1);
    close(info);
    if (n <= 0) return false;
    text[n] = '\0';
    for (const char *line = strstr(text, "lock:"); line; line = strstr(line + 5, "lock:")) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (memmem(line, len, "FLOCK", 5) || memmem(line, len, "OFDLCK", 6)) return true;
    }
    return false;
}

/* A zygote must not share a connection or a lock with its workers: after
 * the bootstrap, any socket but its own request socket, or a descriptor
 * holding a flock(), is a reason to refuse. */
static bool zygote_descriptors_clean(int own_socket, char *why, size_t why_len)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return true;
    int dir_fd = dirfd(dir);
    bool clean = true;
    struct dirent *entry;
    while (clean && (entry = readdir(dir)) != NULL) {
        int fd = atoi(entry->d_name);
        if (entry->d_name[0] == '.' || fd <= 2 || fd == own_socket || fd == dir_fd) continue;
        struct stat st;
        if (fstat(fd, &st) != 0) continue;
        bool socket = S_ISSOCK(st.st_mode);
        if (!socket && !holds_shared_lock(fd)) continue;
        char link[64], target[256] = "";
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n > 0) target[n] = '\0';
        if (socket) {
            snprintf(why, why_len,
                     "the bootstrap left a socket open (descriptor %d, %s): workers forked from the zygote would "
                     "share that connection; open connections in start() (or not in the zygote: "
                     "Lrpm\\process_kind() says where the bootstrap runs)",
                     fd, target);
        } else {
            snprintf(why, why_len,
                     "the bootstrap holds a file lock (flock) on descriptor %d (%s): workers forked from the zygote "
                     "would all hold it, and one releasing it would release it for all; take locks in start() "
                     "(or not in the zygote: Lrpm\\process_kind() says where the bootstrap runs)",
                     fd, target);
        }
        clean = false;
    }
    closedir(dir);
    return clean;
}

/*
 * Why a worker forked from the zygote copies so little of the zygote's
 * Zend heap. After the bootstrap, the zygote's heap has free slots
 * scattered over pages that also hold what the bootstrap built: Zend MM
 * keeps one free list per size class, most recently freed first. A worker
 * whose first allocations took those slots would write into (and so copy)
 * one shared page per allocation, tens of pages per worker for a few KB of
 * its own data. So before serving, the zygote collects its garbage and then
 * takes every free slot of every small size class, until an allocation
 * comes from a fresh run (the first element of a run is page-aligned and
 * the next one follows it), and keeps them: a worker's small allocations
 * then fill fresh pages of their own, densely. What is taken is counted in
 * memory_get_usage() (the zygote's and so each worker's), and reported with
 * READY (in KiB), which the supervisor logs.
 */
#if !ZEND_DEBUG
# define LRPM_BIN_SIZE(num, size, elements, pages, x, y) size,
static const uint32_t zend_mm_bin_sizes[] = {ZEND_MM_BINS_INFO(LRPM_BIN_SIZE, x, y)};
# undef LRPM_BIN_SIZE
#endif

/* Free slots taken are never given back; at most this much per size. */
#define ZYGOTE_FREE_SLOTS_LIMIT (1u << 20)

static size_t take_zygote_free_slots(void)
{
#if ZEND_DEBUG
    return 0;
#else
    if (!is_zend_mm()) return 0;
    size_t taken = 0;
    for (size_t bin = 0; bin < sizeof(zend_mm_bin_sizes) / sizeof(zend_mm_bin_sizes[0]); bin++) {
        size_t size = zend_mm_bin_sizes[bin];
        /* A size class this build never hands out as such (PHP 8.4 serves
         * 8-byte requests from the 16-byte class, whose free slots hold a
         * shadow pointer) is taken through the class it rounds up to. */
        void *probe = emalloc(size);
        if (zend_mem_block_size(probe) != size) {
            efree(probe);
            continue;
        }
        uintptr_t slot = (uintptr_t)probe;
        for (size_t spent = size; spent < ZYGOTE_FREE_SLOTS_LIMIT; spent += size) {
            taken += size;
            if (slot % 4096 == 0) {
                uintptr_t next = (uintptr_t)emalloc(size);
                taken += size;
                if (next == slot + size) break;
            }
            slot = (uintptr_t)emalloc(size);
        }
    }
    return taken;
#endif
}

/*
 * A deploy while the zygote runs. Workers forked from it would run the code
 * it loaded (the bootstrap, the autoloader's class maps, what the warm-up
 * loaded) next to newer files they autoload themselves. So the zygote
 * remembers every file it included, and the bootstrap's path as given and
 * as resolved (a deploy that switches a symlink changes no old file), and,
 * at most once a second when asked for a worker, looks again: on a change
 * it answers STALE and ends, and the supervisor starts a new zygote for
 * that request and the ones after it.
 */
typedef struct {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    struct timespec ctime;
} loaded_file;

static loaded_file *loaded_files = NULL;
static size_t loaded_count = 0;
static char *bootstrap_given = NULL;
static char *bootstrap_resolved = NULL;
static long long last_code_check_ns = 0;
#define CODE_CHECK_INTERVAL_NS 1000000000LL

static void remember_loaded_code(const char *bootstrap)
{
    size_t capacity = zend_hash_num_elements(&EG(included_files));
    loaded_files = calloc(capacity ? capacity : 1, sizeof(*loaded_files));
    loaded_count = 0;
    zend_string *name;
    if (loaded_files) {
        ZEND_HASH_FOREACH_STR_KEY(&EG(included_files), name) {
            struct stat st;
            if (!name || loaded_count >= capacity || stat(ZSTR_VAL(name), &st) != 0) continue;
            char *path = strdup(ZSTR_VAL(name));
            if (!path) continue;
            loaded_files[loaded_count++] = (loaded_file){path, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
        } ZEND_HASH_FOREACH_END();
    }
    if (bootstrap && *bootstrap) {
        bootstrap_given = strdup(bootstrap);
        bootstrap_resolved = realpath(bootstrap, NULL);
    }
    last_code_check_ns = monotonic_coarse_ns();
}

static bool same_time(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/* Whether the code the zygote loaded changed on disk (checked at most once
 * a second); `why` says what changed. */
static bool zygote_code_changed(char *why, size_t why_len)
{
    long long now = monotonic_coarse_ns();
    if (now - last_code_check_ns < CODE_CHECK_INTERVAL_NS) return false;
    last_code_check_ns = now;
    if (bootstrap_given) {
        char *resolved = realpath(bootstrap_given, NULL);
        bool moved = !resolved || !bootstrap_resolved || strcmp(resolved, bootstrap_resolved) != 0;
        if (moved) {
            snprintf(why, why_len, "the bootstrap %s now resolves to %s", bootstrap_given,
                     resolved ? resolved : "nothing");
        }
        free(resolved);
        if (moved) return true;
    }
    for (size_t i = 0; i < loaded_count; i++) {
        const loaded_file *f = &loaded_files[i];
        struct stat st;
        if (stat(f->path, &st) != 0) {
            snprintf(why, why_len, "%s, which it loaded, is gone", f->path);
            return true;
        }
        if (st.st_dev != f->dev || st.st_ino != f->ino || st.st_size != f->size || !same_time(st.st_mtim, f->mtime)
            || !same_time(st.st_ctim, f->ctime)) {
            snprintf(why, why_len, "%s, which it loaded, changed", f->path);
            return true;
        }
    }
    return false;
}

/* The zygote's copy of the spec, adjusted for each worker it forks. */
static lrpm_child_spec worker_spec;

/* In the worker a zygote forked (through an intermediate that exited):
 * output on its own pipes, reparented to the supervisor (a child
 * subreaper), PDEATHSIG armed, per-process state reset. */
static void become_zygote_worker(int socket_fd, int *fds, int nfds, const lrpm_zygote_request *request,
                                 const char *title)
{
    close(socket_fd);
    if (nfds == 2) {
        if (dup2(fds[0], STDOUT_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0) {
            child_setup_failed(current_spec, "dup2");
        }
        close(fds[0]);
        close(fds[1]);
    }
    pid_t supervisor = current_spec->parent_pid;
    /* The intermediate exits right after forking: wait (at most a second)
     * until this process is the supervisor's. */
    for (int i = 0; getppid() != supervisor; i++) {
        if (i >= 20000) child_setup_failed(current_spec, "reparenting to the supervisor");
        usleep(50);
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) child_setup_failed(current_spec, "prctl(PR_SET_PDEATHSIG)");
    if (getppid() != supervisor) child_setup_failed(current_spec, "getppid (the supervisor died)");
    setpgid(0, 0);
    worker_spec = *current_spec;
    worker_spec.shared_page = (lrpm_shared_page *)(uintptr_t)request->shared_page;
    worker_spec.stop_grace_ms = request->stop_grace_ms;
    worker_spec.message_fd = -1;
    current_spec = &worker_spec;
    stop_requested = 0;
    stop_requested_at_ns = 0;
    reload_requested = 0;
    forked_by_worker = 0;
    recycle_asked = false;
    cycle_began_ns = 0;
    last_gc_between_cycles_ns = monotonic_coarse_ns();
    opcache_published_at_ns = last_gc_between_cycles_ns;
    process_kind = "worker";
    lrpm_title_set(title);
    /* Each worker draws its own random numbers: the generators seed again
     * from the system's entropy at their next use. */
    RANDOM_G(mt19937_seeded) = false;
    RANDOM_G(combined_lcg_seeded) = false;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_zygote_serve, 0, 2, IS_STRING, 1)
    ZEND_ARG_TYPE_INFO(0, socket, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, bootstrap, IS_STRING, 0)
ZEND_END_ARG_INFO()

/*
 * The zygote's loop: waits for requests on the socket and forks a worker
 * for each. Returns the worker's params (JSON) in that worker, and null in
 * the zygote when it must end (the supervisor closed the socket, or a stop).
 * Each worker is forked by a short-lived intermediate, so that it becomes
 * the supervisor's child (the supervisor is a child subreaper): the
 * supervisor reaps, signals and watches its workers as if it forked them.
 */
static PHP_FUNCTION(lrpm_zygote_serve)
{
    zend_long socket_fd;
    zend_string *bootstrap;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_LONG(socket_fd)
        Z_PARAM_STR(bootstrap)
    ZEND_PARSE_PARAMETERS_END();
    int fd = (int)socket_fd;
    char why[1024];
    if (!zygote_descriptors_clean(fd, why, sizeof(why))) {
        zygote_send(fd, LRPM_ZYGOTE_REFUSED, 0, why);
        RETURN_NULL();
    }
    size_t capacity = 1 << 20;
    char *buffer = emalloc(capacity);
    remember_loaded_code(ZSTR_VAL(bootstrap));
    zend_gc_collect_cycles();
    size_t taken = take_zygote_free_slots();
    zygote_send(fd, LRPM_ZYGOTE_READY, (int32_t)(taken / 1024), NULL);
    for (;;) {
        if (stop_requested) break;
        char control[CMSG_SPACE(2 * sizeof(int))];
        struct iovec iov = {buffer, capacity};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        int fds[2] = {-1, -1};
        int nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (nfds > 2) nfds = 2;
                memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
            }
        }
        lrpm_zygote_request request;
        bool usable = (size_t)n >= sizeof(request) && !(msg.msg_flags & MSG_TRUNC);
        if (usable) {
            memcpy(&request, buffer, sizeof(request));
            usable = sizeof(request) + (size_t)request.title_len + request.params_len == (size_t)n;
        }
        if (!usable) {
            for (int i = 0; i < nfds; i++) close(fds[i]);
            zygote_send(fd, LRPM_ZYGOTE_FAILED, EINVAL, NULL);
            continue;
        }
        char changed[1024];
        if (zygote_code_changed(changed, sizeof(changed))) {
            for (int i = 0; i < nfds; i++) close(fds[i]);
            zygote_send(fd, LRPM_ZYGOTE_STALE, 0, changed);
            break;
        }
        const char *title_start = buffer + sizeof(request);
        const char *params = title_start + request.title_len;
        /* A stop sent to the new worker before it reset its flags must not
         * be lost: the signals stay blocked until then. */
        sigset_t stops, previous;
        sigemptyset(&stops);
        sigaddset(&stops, SIGTERM);
        sigaddset(&stops, SIGINT);
        sigaddset(&stops, SIGHUP);
        sigprocmask(SIG_BLOCK, &stops, &previous);
        /* The intermediate is a vfork() child: it shares the zygote's
         * memory (the zygote waits meanwhile), so it costs no copy of the
         * zygote's page tables and no teardown at its exit, which the
         * worker would wait for to be reparented. It only forks the
         * worker (a single-threaded process's fork() touches no shared
         * state that outlives the call), replies and _exits, and never
         * returns from this function. */
        pid_t intermediate = vfork();
        if (intermediate == 0) {
            pid_t worker = fork();
            if (worker == 0) {
                char *title = estrndup(title_start, request.title_len);
                become_zygote_worker(fd, fds, nfds, &request, title);
                sigprocmask(SIG_SETMASK, &previous, NULL);
                RETVAL_STRINGL(params, request.params_len);
                efree(buffer);
                return;
            }
            if (worker > 0) {
                setpgid(worker, worker);
                zygote_send(fd, LRPM_ZYGOTE_STARTED, worker, NULL);
            } else {
                zygote_send(fd, LRPM_ZYGOTE_FAILED, errno, NULL);
            }
            _exit(0);
        }
        int fork_error = errno;
        sigprocmask(SIG_SETMASK, &previous, NULL);
        for (int i = 0; i < nfds; i++) close(fds[i]);
        if (intermediate < 0) {
            zygote_send(fd, LRPM_ZYGOTE_FAILED, fork_error, NULL);
            continue;
        }
        while (waitpid(intermediate, NULL, 0) < 0 && errno == EINTR) {}
    }
    efree(buffer);
    RETURN_NULL();
}

/* PHP 8.4 gave zend_function_entry two more fields (frameless handlers, a
 * doc comment), and ZEND_RAW_FENTRY two more arguments. */
#if PHP_VERSION_ID >= 80400
# define LRPM_FENTRY(name, handler, arginfo) ZEND_RAW_FENTRY(name, handler, arginfo, 0, NULL, NULL)
#else
# define LRPM_FENTRY(name, handler, arginfo) ZEND_RAW_FENTRY(name, handler, arginfo, 0)
#endif

static const zend_function_entry host_functions[] = {
    LRPM_FENTRY("Lrpm\\should_stop", zif_lrpm_should_stop, arginfo_lrpm_should_stop)
    LRPM_FENTRY("Lrpm\\Internal\\params", zif_lrpm_params, arginfo_lrpm_params)
    LRPM_FENTRY("Lrpm\\Internal\\next_cycle", zif_lrpm_next_cycle, arginfo_lrpm_next_cycle)
    LRPM_FENTRY("Lrpm\\Internal\\send", zif_lrpm_send, arginfo_lrpm_send)
    LRPM_FENTRY("Lrpm\\Internal\\wait", zif_lrpm_wait, arginfo_lrpm_wait)
    LRPM_FENTRY("Lrpm\\Internal\\cycle_done", zif_lrpm_cycle_done, arginfo_lrpm_cycle_done)
    LRPM_FENTRY("Lrpm\\Internal\\recycle_requested", zif_lrpm_recycle_requested, arginfo_lrpm_recycle_requested)
    LRPM_FENTRY("Lrpm\\Internal\\set_identity", zif_lrpm_set_identity, arginfo_lrpm_set_identity)
    LRPM_FENTRY("Lrpm\\Internal\\set_process_kind", zif_lrpm_set_process_kind, arginfo_lrpm_set_process_kind)
    LRPM_FENTRY("Lrpm\\Internal\\zygote_serve", zif_lrpm_zygote_serve, arginfo_lrpm_zygote_serve)
    LRPM_FENTRY("Lrpm\\process_kind", zif_lrpm_process_kind, arginfo_lrpm_process_kind)
    LRPM_FENTRY("Lrpm\\Internal\\set_recycle_reason", zif_lrpm_set_recycle_reason, arginfo_lrpm_set_recycle_reason)
    LRPM_FENTRY("Lrpm\\Internal\\publish_opcache_figures", zif_lrpm_publish_opcache, arginfo_lrpm_publish_opcache)
    LRPM_FENTRY("Lrpm\\recycle", zif_lrpm_recycle, arginfo_lrpm_recycle)
    LRPM_FENTRY("Lrpm\\job_id", zif_lrpm_job_id, arginfo_lrpm_job_id)
    LRPM_FENTRY("Lrpm\\slot", zif_lrpm_slot, arginfo_lrpm_slot)
    ZEND_FE(cli_set_process_title, arginfo_cli_set_process_title)
    ZEND_FE(cli_get_process_title, arginfo_cli_get_process_title)
    ZEND_FE_END
};

/* ------------------------------------------------------------------ */
/* The SAPI module                                                     */
/* ------------------------------------------------------------------ */

static size_t lrpm_ub_write(const char *str, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(STDOUT_FILENO, str + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            php_handle_aborted_connection();
            break;
        }
        done += (size_t)w;
    }
    return len;
}

static void lrpm_flush(void *server_context) { (void)server_context; }

static void lrpm_send_header(sapi_header_struct *h, void *ctx) { (void)h; (void)ctx; }

static char *lrpm_read_cookies(void) { return NULL; }

static void lrpm_log_message(const char *message, int syslog_type)
{
    (void)syslog_type;
    fprintf(stderr, "%s\n", message);
    fflush(stderr);
}

static void register_server_variable(const char *name, const char *value, zval *track_vars_array)
{
    char *filtered = estrdup(value);
    size_t length = strlen(filtered);
    if (sapi_module.input_filter(PARSE_SERVER, name, &filtered, length, &length)) {
        php_register_variable(name, filtered, track_vars_array);
    }
    efree(filtered);
}

/* php-cli's set: the environment, then PHP_SELF, SCRIPT_NAME, SCRIPT_FILENAME
 * and PATH_TRANSLATED naming the program ($argv[0]) and an empty
 * DOCUMENT_ROOT. Libraries read them (Symfony Console reads PHP_SELF). */
static void lrpm_register_variables(zval *track_vars_array)
{
    php_import_environment_variables(track_vars_array);
    const char *self = (current_spec && current_spec->argc > 0 && current_spec->argv[0]) ? current_spec->argv[0] : "";
    register_server_variable("PHP_SELF", self, track_vars_array);
    register_server_variable("SCRIPT_NAME", self, track_vars_array);
    register_server_variable("SCRIPT_FILENAME", self, track_vars_array);
    register_server_variable("PATH_TRANSLATED", self, track_vars_array);
    register_server_variable("DOCUMENT_ROOT", "", track_vars_array);
}

static int lrpm_startup(sapi_module_struct *module)
{
    return php_module_startup(module, NULL) == SUCCESS ? SUCCESS : FAILURE;
}

static int lrpm_deactivate(void)
{
    fflush(stdout);
    return SUCCESS;
}

/* Named "cli" on purpose: before PHP 8.5 OPcache only enables itself for
 * SAPIs on its allow-list (accel_find_sapi(), where "cli" needs
 * opcache.enable_cli); 8.5 drops the list but still asks enable_cli of
 * "cli". Apps also test PHP_SAPI === 'cli'. */
static sapi_module_struct lrpm_sapi_module = {
    /* Designated: the struct has gained and retyped fields across PHP
     * versions; whatever is not named here is zero, as
     * STANDARD_SAPI_MODULE_PROPERTIES would set it. */
    .name = "cli",
    .pretty_name = "lrpm-host embedded CLI",
    .startup = lrpm_startup,
    .shutdown = php_module_shutdown_wrapper,
    .deactivate = lrpm_deactivate,
    .ub_write = lrpm_ub_write,
    .flush = lrpm_flush,
    .sapi_error = php_error,
    .send_header = lrpm_send_header,
    .read_cookies = lrpm_read_cookies,
    .register_server_variables = lrpm_register_variables,
    .log_message = lrpm_log_message,
};

/*
 * Defaults below php.ini (php.ini and -d still win): PHP errors are logged
 * to stderr, which the supervisor forwards line by line, and not displayed
 * on stdout. Debian's php.ini says the same; PHP's built-in defaults (a
 * source build without php.ini, the static binary) are the opposite,
 * which would mix error messages into a worker's output.
 */
static void lrpm_ini_defaults(HashTable *configuration_hash)
{
    static const char *const defaults[][2] = {
        {"log_errors", "1"},
        {"display_errors", "0"},
    };
    for (size_t i = 0; i < sizeof(defaults) / sizeof(*defaults); i++) {
        zval value;
        ZVAL_NEW_STR(&value, zend_string_init(defaults[i][1], strlen(defaults[i][1]), 1));
        zend_hash_str_update(configuration_hash, defaults[i][0], strlen(defaults[i][0]), &value);
    }
}

#if defined(LRPM_STATIC_OPCACHE) && PHP_VERSION_ID < 80500
/*
 * A static libphp with OPcache linked in (make php PHP_STATIC=1, build.rs):
 * before 8.5 OPcache exists only as a Zend extension that php.ini loads
 * with dlopen(), which a binary with PHP inside cannot offer it. Its entry
 * point is registered here instead, at the moment dlopen()ed extensions
 * are (after the built-in modules, before php.ini's extensions), so it
 * starts first as zend_extension=opcache would. From 8.5 on PHP registers
 * its built-in OPcache itself.
 */
extern zend_extension zend_extension_entry;
static int (*register_builtin_extensions)(void) = NULL;

static int register_builtin_extensions_and_opcache(void)
{
    if (register_builtin_extensions() == FAILURE) return FAILURE;
    zend_register_extension(&zend_extension_entry, NULL);
    return SUCCESS;
}
#endif

#ifdef LRPM_STATIC_PHP
/*
 * The static binary's php.ini: /etc/lrpm-host/php.ini and
 * /etc/lrpm-host/conf.d/*.ini, unless PHPRC / PHP_INI_SCAN_DIR say
 * otherwise. The paths compiled into libphp name the build's prefix, which
 * does not exist where the binary is shipped to, and on the build machine
 * holds the shared build's conf.d, whose zend_extension=opcache.so this
 * binary (OPcache inside) must not load.
 */
#define LRPM_STATIC_INI_DIR "/etc/lrpm-host"
static char static_scan_dir_env[] = "PHP_INI_SCAN_DIR=" LRPM_STATIC_INI_DIR "/conf.d";
static bool static_scan_dir_set = false;

static void use_static_ini_paths(void)
{
    const char *phprc = getenv("PHPRC");
    if (!phprc || !*phprc) {
        lrpm_sapi_module.php_ini_path_override = LRPM_STATIC_INI_DIR;
    }
    /* PHP reads the scan folder from the environment only; set it for the
     * module startup alone (putenv of a static string: PHP keeps the
     * pointer), so workers do not inherit it. */
    if (!getenv("PHP_INI_SCAN_DIR")) {
        static_scan_dir_set = putenv(static_scan_dir_env) == 0;
    }
}

static void forget_static_scan_dir(void)
{
    if (static_scan_dir_set) unsetenv("PHP_INI_SCAN_DIR");
}
#endif

int lrpm_boot(const char *ini_entries, const char *executable_location)
{
#if defined(LRPM_STATIC_OPCACHE) && PHP_VERSION_ID < 80500
    if (!register_builtin_extensions) {
        register_builtin_extensions = php_register_internal_extensions_func;
        php_register_internal_extensions_func = register_builtin_extensions_and_opcache;
    }
#endif
    zend_signal_startup();
    sapi_startup(&lrpm_sapi_module);
    /* sapi_startup() resets the module's ini_entries: set them afterwards. */
    lrpm_sapi_module.ini_entries = strdup(ini_entries ? ini_entries : "");
    lrpm_sapi_module.php_ini_ignore_cwd = 1;
    lrpm_sapi_module.phpinfo_as_text = 1;
    lrpm_sapi_module.additional_functions = host_functions;
    lrpm_sapi_module.ini_defaults = lrpm_ini_defaults;
    if (executable_location) {
        lrpm_sapi_module.executable_location = strdup(executable_location);
    }
#ifdef LRPM_STATIC_PHP
    use_static_ini_paths();
#endif
    int started = lrpm_sapi_module.startup(&lrpm_sapi_module);
#ifdef LRPM_STATIC_PHP
    forget_static_scan_dir();
#endif
    if (started == FAILURE) {
        return LRPM_BOOT_MODULE_FAILED;
    }
    module_started = true;
    return LRPM_BOOT_OK;
}

/* What sapi/cli's cli_register_file_handles() does: STDIN, STDOUT, STDERR. */
static void register_std_constants(void)
{
    static const char *const names[3] = {"STDIN", "STDOUT", "STDERR"};
    static const char *const paths[3] = {"php://stdin", "php://stdout", "php://stderr"};
    static const char *const modes[3] = {"rb", "wb", "wb"};
    for (int i = 0; i < 3; i++) {
        php_stream *stream = php_stream_open_wrapper_ex(paths[i], modes[i], 0, NULL, NULL);
        if (!stream) continue;
        /* Keep the descriptors open when the constants are destroyed. */
        stream->flags |= PHP_STREAM_FLAG_NO_CLOSE;
        zend_constant constant;
        php_stream_to_zval(stream, &constant.value);
        ZEND_CONSTANT_SET_FLAGS(&constant, CONST_CS, 0);
        constant.name = zend_string_init_interned(names[i], strlen(names[i]), 0);
        zend_register_constant(&constant);
    }
}

/* A child whose own setup failed: name the call, exit with
 * CHILD_SETUP_FAILED (the code comes from src/exit_code.rs via the spec). */
static void child_setup_failed(const lrpm_child_spec *spec, const char *call)
{
    int saved = errno;
    char message[256];
    int len = snprintf(message, sizeof(message), "lrpm-host: child setup failed: %s: %s\n", call, strerror(saved));
    if (len > 0) {
        ssize_t ignored = write(STDERR_FILENO, message, (size_t)len < sizeof(message) ? (size_t)len : sizeof(message) - 1);
        (void)ignored;
    }
    _exit(spec->setup_failed_exit);
}

/*
 * Signals a worker must take exactly as a plain process does (default
 * action) unless user code installs a handler with pcntl_signal(). The
 * supervisor is a Rust program: Rust's runtime installs SIGSEGV and SIGBUS
 * handlers (stack-overflow detection) that reset themselves and return, so a
 * SIGSEGV sent with kill() was swallowed once. The others are reset too in
 * case anything in the parent touched them. SIGPIPE stays ignored, as
 * php-cli ignores it (a closed socket is an error return, not a death).
 */
static const int default_action_signals[] = {
    SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS,
    SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM,
};

static void reset_default_actions(const lrpm_child_spec *spec)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_DFL;
    for (size_t i = 0; i < sizeof(default_action_signals) / sizeof(*default_action_signals); i++) {
        if (sigaction(default_action_signals[i], &sa, NULL) != 0) {
            child_setup_failed(spec, "sigaction(SIG_DFL)");
        }
    }
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) != 0) {
        child_setup_failed(spec, "sigaction(SIGPIPE, SIG_IGN)");
    }
}

/* No SA_RESTART: the stop signal interrupts blocking system calls that
 * PHP does not retry itself (README "Stopping a worker"). */
static void install_child_signal_handlers(const lrpm_child_spec *spec)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    if (sigaction(SIGTERM, &sa, NULL) != 0) child_setup_failed(spec, "sigaction(SIGTERM)");
    if (sigaction(SIGINT, &sa, NULL) != 0) child_setup_failed(spec, "sigaction(SIGINT)");
    sa.sa_handler = on_reload_signal;
    if (sigaction(SIGHUP, &sa, NULL) != 0) child_setup_failed(spec, "sigaction(SIGHUP)");
}

int lrpm_child_main(const lrpm_child_spec *spec)
{
    current_spec = spec;
    stop_requested = 0;
    stop_requested_at_ns = 0;
    forked_by_worker = 0;
    recycle_asked = false;
    cycle_began_ns = 0;
    last_gc_between_cycles_ns = monotonic_coarse_ns();
    opcache_published_at_ns = last_gc_between_cycles_ns;
    pthread_atfork(NULL, NULL, on_fork_in_child);
    reload_requested = 0;
    if (spec->title) lrpm_title_set(spec->title);

    /*
     * zend_signal_startup() snapshots the installed handlers; request
     * startup then puts PHP's deferring handler in front of them. Without
     * the second startup our handlers would be replaced by the supervisor's
     * snapshot (SIG_DFL), and SIGTERM would kill the worker mid-cycle.
     */
    reset_default_actions(spec);
    install_child_signal_handlers(spec);
    zend_signal_startup();

    SG(options) |= SAPI_OPTION_NO_CHDIR;
    SG(request_info).argc = spec->argc;
    SG(request_info).argv = spec->argv;

    int status = 0;
    bool started = false;
    zend_try {
        if (php_request_startup() == SUCCESS) {
            started = true;
        }
    } zend_end_try();
    /* The fork left SIGTERM/SIGINT/SIGHUP blocked; PHP's deferring handler
     * and ours are in place now, so a signal that arrived early is handled. */
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) {
        child_setup_failed(spec, "sigprocmask(SIG_SETMASK, {})");
    }
    if (!started) {
        return spec->request_failed_exit;
    }

    wrap_pcntl_signal();

    SG(headers_sent) = 1;
    SG(request_info).no_headers = 1;
    /* php_execute_script() clears this; we run the runner ourselves, and
     * while it is set every error message is labelled "PHP Request Startup"
     * instead of the function that raised it. */
    PG(during_request_startup) = 0;

    zend_try {
        register_std_constants();
        zend_eval_stringl_ex(spec->runner_code, strlen(spec->runner_code), NULL,
                             "lrpm-host runner", 1);
    } zend_end_try();
    status = EG(exit_status);

    zend_try {
        php_request_shutdown(NULL);
    } zend_end_try();
    fflush(stdout);
    fflush(stderr);
    /* Its stop is done (shutdown functions and destructors ran): what is
     * left is the kernel's teardown, which thousands of processes ending
     * at once can make last seconds. The supervisor does not take that for
     * a worker stuck past its stop deadline. */
    lrpm_shared_page *page = own_shared_page();
    if (page) {
        __atomic_store_n(&page->ended_status, (uint64_t)(uint32_t)status + 1, __ATOMIC_RELEASE);
    }
    return status;
}
