/*
 * What the shim's C files share (lrpm_shim.c, lrpm_functions.c, lrpm_waits.c,
 * lrpm_zygote.c, lrpm_tasks.c, lrpm_backtrace.c);
 * never read by bindgen. Per-process state of a child: set once after fork,
 * read by host functions; signal handlers only store into the sig_atomic_t
 * flags. Hidden: none of it is exported from the binary.
 */
#ifndef LRPM_SHIM_INTERNAL_H
#define LRPM_SHIM_INTERNAL_H

#include "lrpm_shim.h"

#include <main/php.h>
#include <main/php_version.h>

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

/* The stop (lrpm_waits.c). */
extern volatile sig_atomic_t stop_requested;
/* When the first stop request arrived (CLOCK_MONOTONIC, ns; 0: none yet). */
extern volatile long long stop_requested_at_ns;
void note_stop_request(void);

/* lrpm_shim.c. */
extern volatile sig_atomic_t reload_requested;
extern const lrpm_child_spec *current_spec;
/* Set in any process the worker forks itself (pcntl_fork): such a copy must
 * leave the worker loop instead of running a second copy of it. */
extern volatile sig_atomic_t forked_by_worker;
/* Set by Lrpm\recycle(); the worker loop ends at the next check. */
extern bool recycle_asked;
/* When the running cycle began (CLOCK_MONOTONIC ns), 0 between cycles. */
extern uint64_t cycle_began_ns;
extern long long last_gc_between_cycles_ns;
extern long long opcache_published_at_ns;
/* When cycle_done() last looked at the Zend heap's free memory (0: never). */
extern long long release_checked_at_ns;
/* "worker", "config", "zygote" or "task", for Lrpm\process_kind(). */
extern const char *process_kind;
long long monotonic_coarse_ns(void);
/* This process's shared page, or NULL: also NULL in a process the worker
 * forked itself, which inherits the mapping but must not write into it. */
lrpm_shared_page *own_shared_page(void);
/* The title lrpm_title_set() last set (cli_get_process_title()), or NULL. */
extern char *current_title;
/* The supervisor that started this child is gone. */
bool parent_changed(void);
/* Names the failed call on stderr and exits CHILD_SETUP_FAILED. */
void child_setup_failed(const lrpm_child_spec *spec, const char *call);

/* lrpm_functions.c: the functions the host gives PHP; lrpm_tasks.c: Lrpm\Task's. */
extern const zend_function_entry lrpm_host_functions[];
extern const zend_function_entry lrpm_task_functions[];
/* A zend_function_entry for a namespaced name (PHP 8.4 gave the struct two
 * more fields, and ZEND_RAW_FENTRY two more arguments). */
#if PHP_VERSION_ID >= 80400
# define LRPM_FENTRY(name, handler, arginfo) ZEND_RAW_FENTRY(name, handler, arginfo, 0, NULL, NULL)
#else
# define LRPM_FENTRY(name, handler, arginfo) ZEND_RAW_FENTRY(name, handler, arginfo, 0)
#endif

/* lrpm_waits.c: nanoseconds left of the stop's grace (0 once it passed);
 * -1 without a pending stop or a grace. */
long long stop_grace_left_ns(void);
/* lrpm_backtrace.c: backtraces on demand and Lrpm\progress(). */
extern const zend_function_entry lrpm_backtrace_functions[];
/* Counts backtrace signals: a wait they alone interrupted resumes. */
extern volatile sig_atomic_t backtrace_signals;
/* Once the child's PHP request runs (again in a zygote's worker, whose
 * page is new): answer backtrace requests. False (errno set) when
 * sigaction failed. */
bool backtrace_answers_start(void);
/* Before the request ends: frames are about to go away. */
void backtrace_answers_end(void);
/* lrpm_waits.c: counts stop signals, for the same comparison. */
extern volatile sig_atomic_t stop_signals;

/* lrpm_zygote.c: Lrpm\Internal\zygote_serve(). */
PHP_FUNCTION(lrpm_zygote_serve);

#pragma GCC visibility pop

#endif
