/*
 * The functions lrpm-host gives PHP (Lrpm\should_stop(), Lrpm\recycle(),
 * the runner's Lrpm\Internal\* and cli_set_process_title), registered as
 * the SAPI's additional functions by lrpm_boot() (lrpm_shim.c).
 */
#include "lrpm_shim_internal.h"

#include <main/php.h>
#include <main/php_version.h>
#include <Zend/zend_exceptions.h>
#include <Zend/zend_gc.h>

#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* Between cycles, at most once a second: what the cycles allocated and
 * freed goes back to the kernel once more than this is free in the Zend
 * heap (memory_get_usage(true) - memory_get_usage()), as after start()
 * (php/runner.php). The check is two reads of the heap's counters; the
 * release (zend_mm_gc, malloc_trim) runs only past the threshold, so a
 * worker that keeps its memory in use pays nothing, and one that frees and
 * reuses the same memory every cycle pays at most one release a second. */
#define FREE_MEMORY_WORTH_RELEASING ((size_t)4 << 20)
#define RELEASE_CHECK_INTERVAL_NS 1000000000LL
long long release_checked_at_ns = 0;

static void release_free_memory_if_worth_it(long long now)
{
    if (now - release_checked_at_ns < RELEASE_CHECK_INTERVAL_NS) return;
    release_checked_at_ns = now;
    size_t allocated = zend_memory_usage(1), used = zend_memory_usage(0);
    if (allocated <= used || allocated - used <= FREE_MEMORY_WORTH_RELEASING) return;
    zend_mm_gc(zend_mm_get_heap());
    malloc_trim(0);
}

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
        __atomic_store_n(&page->cycle_ended_ns, now, __ATOMIC_RELAXED);
        __atomic_fetch_add(&page->cycles, 1, __ATOMIC_RELEASE);
    }
    cycle_began_ns = 0;
    if (recycle_due()) RETURN_LONG(0);
    long long now = monotonic_coarse_ns();
    release_free_memory_if_worth_it(now);
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
    else if (zend_string_equals_literal(kind, "task")) process_kind = "task";
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

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_release_free_memory, 0, 0, IS_LONG, 0)
ZEND_END_ARG_INFO()

/* Gives the kernel back what the process freed: the Zend heap's wholly
 * free chunks and cached pages (zend_mm_gc), then glibc's free memory
 * (malloc_trim, which also returns whole free pages inside its heap).
 * Returns the bytes zend_mm_gc released. */
static PHP_FUNCTION(lrpm_release_free_memory)
{
    ZEND_PARSE_PARAMETERS_NONE();
    size_t released = zend_mm_gc(zend_mm_get_heap());
    malloc_trim(0);
    RETURN_LONG((zend_long)released);
}

const zend_function_entry lrpm_host_functions[] = {
    LRPM_FENTRY("Lrpm\\Internal\\release_free_memory", zif_lrpm_release_free_memory, arginfo_lrpm_release_free_memory)
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
