/*
 * lrpm-host's C shim. See lrpm_shim.h for the contract and docs/architecture.md for why
 * this split exists (zend_try is setjmp/longjmp; a longjmp across Rust
 * frames is undefined behaviour).
 */
#ifndef _GNU_SOURCE
# define _GNU_SOURCE /* memmem */
#endif
#include "lrpm_shim_internal.h"

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

volatile sig_atomic_t reload_requested = 0;
const lrpm_child_spec *current_spec = NULL;
volatile sig_atomic_t forked_by_worker = 0;

static void on_fork_in_child(void) { forked_by_worker = 1; }

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

long long last_gc_between_cycles_ns = 0;

long long monotonic_coarse_ns(void)
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
uint64_t cycle_began_ns = 0;

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
bool recycle_asked = false;

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

long long opcache_published_at_ns = 0;

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
/* Which kind of process this is                                      */
/* ------------------------------------------------------------------ */

/* What "kind" of process this is, for Lrpm\process_kind(). */
const char *process_kind = "unknown";

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


ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_zygote_serve, 0, 2, IS_STRING, 1)
    ZEND_ARG_TYPE_INFO(0, socket, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, bootstrap, IS_STRING, 0)
ZEND_END_ARG_INFO()

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
void child_setup_failed(const lrpm_child_spec *spec, const char *call)
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
