/*
 * The C side of lrpm-host: everything that must touch Zend macros, zend_try
 * (setjmp/longjmp) or SAPI callbacks lives here. Rust calls these functions
 * only; no longjmp ever crosses a Rust frame. Policy stays in Rust.
 */
#ifndef LRPM_SHIM_H
#define LRPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

/*
 * One page of memory shared between the supervisor and one child
 * (mmap(MAP_SHARED|MAP_ANONYMOUS) by the parent before fork; Rust side:
 * src/process/shared_page.rs, which must keep the same layout and offsets).
 * The child writes, the supervisor reads; every field is 64-bit (the header
 * words 32-bit) and updated with atomic operations, never with a syscall.
 */
#define LRPM_SHARED_PAGE_SIZE 4096
#define LRPM_SHARED_PAGE_MAGIC 0x4d50524cu /* "LRPM" read as little-endian */
#define LRPM_SHARED_PAGE_VERSION 6u

/* Running tasks whose pids the page lists (more still count). */
#define LRPM_TASK_PIDS 32
/* Lrpm\Internal\task_note()'s events. */
#define LRPM_TASK_STARTED 1
#define LRPM_TASK_SUCCEEDED 2
#define LRPM_TASK_FAILED 3
#define LRPM_TASK_TIMED_OUT 4

/* Bits of lrpm_shared_page.flags. */
/* User code called pcntl_signal(SIGTERM, ...) / pcntl_signal(SIGINT, ...). */
#define LRPM_FLAG_USER_SIGTERM_HANDLER 0x1u
#define LRPM_FLAG_USER_SIGINT_HANDLER 0x2u
/* A stop signal (SIGTERM, SIGINT) reached the worker: an exit 0 after it is a
 * stop, whoever sent it. */
#define LRPM_FLAG_STOP_SIGNALLED 0x4u
/* The worker answers backtrace requests: its handler for
 * lrpm_backtrace_signal() is in place (before, that signal would kill it). */
#define LRPM_FLAG_BACKTRACE_READY 0x8u

/* Version 6: Lrpm\progress()'s note, at most this many bytes. */
#define LRPM_PROGRESS_NOTE_BYTES 64
/* Version 6: the room for a backtrace's text. */
#define LRPM_BACKTRACE_BYTES 3072

/*
 * The cycle fields (version 2) are written by the worker loop: when a cycle
 * is about to start (Lrpm\Internal\next_cycle() returning true) and right
 * after cycle() returned (Lrpm\Internal\cycle_done()). At the end of a
 * cycle the stores go in this order: last_cycle_ns, heap_bytes,
 * peak_heap_bytes, cycle_started_ns = 0 (all relaxed), then cycles += 1
 * with release. A reader that loads cycles with acquire first therefore
 * never pairs the new count with the start time of the cycle it counts:
 * it sees 0 or a later cycle's start, and figures at least as recent as
 * the count.
 */
typedef struct lrpm_shared_page {
    uint32_t magic;            /* LRPM_SHARED_PAGE_MAGIC, written by the parent */
    uint32_t version;          /* LRPM_SHARED_PAGE_VERSION */
    uint64_t flags;            /* LRPM_FLAG_* */
    uint64_t cycles;           /* completed cycle() calls of this process */
    uint64_t cycle_started_ns; /* CLOCK_MONOTONIC ns the running cycle began; 0 between cycles */
    uint64_t last_cycle_ns;    /* duration of the last completed cycle, ns */
    uint64_t heap_bytes;       /* zend_memory_usage(1) at the end of the last cycle */
    uint64_t peak_heap_bytes;  /* zend_memory_peak_usage(1) at the end of the last cycle */
    /* Version 3. */
    uint64_t recycle_reason;       /* why the worker exits 75 (Lrpm\Internal\RECYCLE_*), set just before; 0 otherwise */
    uint64_t opcache_published_ns; /* CLOCK_MONOTONIC ns of the last OPcache publication (0: never); stored last, release */
    uint64_t opcache_used_bytes;   /* opcache_get_status(): memory_usage.used_memory */
    uint64_t opcache_free_bytes;   /* memory_usage.free_memory */
    uint64_t opcache_hits;         /* opcache_statistics.hits */
    uint64_t opcache_misses;       /* opcache_statistics.misses */
    /* Version 4. */
    uint64_t ended_status; /* 1 + the status the process exits with, once its PHP request has ended; 0 before */
    /* Version 5: the worker's tasks (Lrpm\Task), written by the worker
     * only (Lrpm\Internal\task_note): a start fills a free pid slot and then
     * adds to tasks_running with release; an end clears its slot first. */
    uint64_t tasks_running;
    uint64_t tasks_started;
    uint64_t tasks_failed;    /* threw, died, or sent nothing back */
    uint64_t tasks_timed_out; /* killed at their wait's timeout or the stop's grace */
    uint64_t task_pids[LRPM_TASK_PIDS]; /* running tasks' pids, 0: free; the first LRPM_TASK_PIDS only */
    /* Version 6: the heartbeat, written by the worker. progress_ns is
     * stored last (release) by Lrpm\progress(); the note is guarded by
     * progress_note_seq, odd while it is being written (a seqlock). */
    uint64_t progress_ns;       /* CLOCK_MONOTONIC ns of the last Lrpm\progress() call; 0: none */
    uint64_t progress_calls;    /* Lrpm\progress() calls of this process */
    uint64_t cycle_ended_ns;    /* CLOCK_MONOTONIC ns the last cycle() returned; 0: none yet */
    uint64_t progress_note_seq;
    char progress_note[LRPM_PROGRESS_NOTE_BYTES]; /* NUL-terminated */
    /* Version 6: backtraces on demand. The supervisor stores a new number
     * in backtrace_asked and sends lrpm_backtrace_signal(); the worker
     * writes its PHP stack into backtrace_text (backtrace_length bytes, no
     * NUL), then stores the number it answered in backtrace_answered with
     * release. The only field the supervisor writes. */
    uint64_t backtrace_asked;
    uint64_t backtrace_answered;
    uint64_t backtrace_length;
    char backtrace_text[LRPM_BACKTRACE_BYTES];
    /* Room for later versions; zero until one defines them. */
    uint64_t reserved[(LRPM_SHARED_PAGE_SIZE - 3592) / 8];
} lrpm_shared_page;

/*
 * The zygote's protocol (a SOCK_SEQPACKET socketpair; src/supervisor/zygote.rs
 * keeps the same layout). A request is one message: this header, the
 * process title, then the worker's params JSON, with the worker's stdout
 * and stderr write ends attached (SCM_RIGHTS; none when output is not
 * captured). A reply is one `lrpm_zygote_reply`, optionally followed by text.
 */
typedef struct lrpm_zygote_request {
    uint64_t shared_page; /* address of the worker's page (mapped before the zygote forked), or 0 */
    int64_t stop_grace_ms;
    uint32_t title_len;
    uint32_t params_len;
} lrpm_zygote_request;

#define LRPM_ZYGOTE_READY 1     /* value: KiB of free heap slots kept */
#define LRPM_ZYGOTE_REFUSED 2   /* value: 0; text: why */
#define LRPM_ZYGOTE_STARTED 3   /* value: the worker's pid */
#define LRPM_ZYGOTE_FAILED 4    /* value: errno of the failed fork */
#define LRPM_ZYGOTE_STALE 5     /* value: 0; text: what changed; the zygote exits, unanswered requests are not served */

typedef struct lrpm_zygote_reply {
    uint32_t kind;
    int32_t value;
} lrpm_zygote_reply;

/* Status codes returned by lrpm_boot(). */
#define LRPM_BOOT_OK 0
#define LRPM_BOOT_MODULE_FAILED 2

typedef struct lrpm_child_spec {
    /* PHP source of the runner (no opening tag), compiled in the child. */
    const char *runner_code;
    /* JSON object handed to the runner through Lrpm\Internal\params(). */
    const char *params_json;
    /* $argv for the request. */
    int argc;
    char **argv;
    /* Process title shown by ps; NULL keeps the current one. */
    const char *title;
    /* Descriptor the runner writes framed messages to (config process), or -1. */
    int message_fd;
    /* Parent pid at fork time: should_stop() turns true once it changes. */
    int parent_pid;
    /* Exit statuses (from src/exit_code.rs, the one table): the request
     * could not start / the child's own setup (signals, ...) failed. */
    int request_failed_exit;
    int setup_failed_exit;
    /* This child's shared page, or NULL. */
    lrpm_shared_page *shared_page;
    /* Once a stop is requested, poll() waits end this many ms after it
     * (see poll() in lrpm_waits.c); -1: never bounded. */
    long long stop_grace_ms;
} lrpm_child_spec;

/*
 * Module startup, once, in the supervisor: zend_signal_startup, sapi_startup
 * with a SAPI named "cli", the given ini entries, php_module_startup.
 * No request is started. Returns LRPM_BOOT_*.
 */
int lrpm_boot(const char *ini_entries, const char *executable_location);

/*
 * Runs in a freshly forked child: installs the stop/reload handlers,
 * re-runs zend_signal_startup so they survive request startup, starts a
 * request, defines STDIN/STDOUT/STDERR, runs the runner and shuts the
 * request down. Returns the exit status the child should _exit with.
 */
int lrpm_child_main(const lrpm_child_spec *spec);

/*
 * Makes the whole argv+environ area writable for process titles (moves
 * environ strings to the heap first, as PostgreSQL and PHP's ps_title do).
 * Call once, early, while single-threaded.
 */
void lrpm_title_init(void);
/* Sets the title shown by ps (truncated to the available area). */
void lrpm_title_set(const char *title);

/*
 * PHP's memory_limit in bytes as the module sees it after lrpm_boot()
 * (php.ini, -d): -1 when unlimited, and before a successful boot.
 */
long long lrpm_memory_limit_bytes(void);

/* The signal that asks a worker for its PHP stack (a real-time signal:
 * csrc/lrpm_backtrace.c). Send it only once the page has
 * LRPM_FLAG_BACKTRACE_READY. */
int lrpm_backtrace_signal(void);

/* PHP version string the library was built with (PHP_VERSION). */
const char *lrpm_php_version(void);

#endif
