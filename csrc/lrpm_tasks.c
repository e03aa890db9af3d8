/*
 * What Lrpm\Task (php/interfaces/Lrpm_Task.php) needs from C: a fork that
 * makes a task of the calling worker (it dies with the worker, runs none of
 * the worker's shutdown functions, flushes none of its output buffers), the
 * task's way out through _exit (no destructors: the worker's connections
 * survive), reaping and signalling the task, and the stop's grace.
 */
#include "lrpm_shim_internal.h"

#include <main/php.h>
#include <main/php_output.h>
#include <Zend/zend_closures.h>
#include <Zend/zend_compile.h>
#include <Zend/zend_exceptions.h>
#include <ext/standard/basic_functions.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * exit() in a task unwinds the stack it shares with the worker's code (the
 * runner, cycle(), Task::run): each frame's variables are released, and an
 * object only they held (the worker, its PDO) would be freed in the task,
 * its destructor run and its connection closed (PDO's free handler sends
 * PostgreSQL's Terminate over the socket the worker still uses). So the
 * task holds one more reference to every variable, $this and closure of
 * the frames it was forked in: nothing the worker had is ever freed there.
 * The task leaves through _exit, so these references are never given back.
 */
static void pin_worker_frames(void)
{
    for (zend_execute_data *ex = EG(current_execute_data); ex; ex = ex->prev_execute_data) {
        if (Z_TYPE(ex->This) == IS_OBJECT) GC_ADDREF(Z_OBJ(ex->This));
        zend_function *func = ex->func;
        if (!func || !ZEND_USER_CODE(func->type)) continue;
        if (ZEND_CALL_INFO(ex) & ZEND_CALL_CLOSURE) GC_ADDREF(ZEND_CLOSURE_OBJECT(func));
        for (uint32_t i = 0; i < func->op_array.last_var; i++) {
            Z_TRY_ADDREF_P(ZEND_CALL_VAR_NUM(ex, i));
        }
        if (ZEND_CALL_INFO(ex) & ZEND_CALL_FREE_EXTRA_ARGS) {
            uint32_t extra = ZEND_CALL_NUM_ARGS(ex) - func->op_array.num_args;
            zval *arg = ZEND_CALL_VAR_NUM(ex, func->op_array.last_var + func->op_array.T);
            for (uint32_t i = 0; i < extra; i++) Z_TRY_ADDREF_P(arg + i);
        }
    }
}

/* Why a task exits at once after its fork: its worker was already gone. */
#define TASK_ORPHANED 70

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_task_fork, 0, 0, IS_LONG, 0)
ZEND_END_ARG_INFO()

/* The task's pid in the worker, 0 in the task. */
PHP_FUNCTION(lrpm_task_fork)
{
    ZEND_PARSE_PARAMETERS_NONE();
    pid_t worker = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        zend_throw_exception_ex(NULL, errno, "cannot fork a task: %s", strerror(errno));
        RETURN_THROWS();
    }
    if (pid > 0) RETURN_LONG(pid);
    /* Dies with its worker: set, then checked, since the worker may have
     * died between the fork and the prctl. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != worker) _exit(TASK_ORPHANED);
    process_kind = "task";
    /* The worker's stop (SIGTERM to its group) is the worker's to carry
     * out: it waits for its tasks until the stop's grace ends, then kills
     * them. A task does not see it, so its sleeps and reads run on. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigprocmask(SIG_BLOCK, &stop_signals, NULL);
    pin_worker_frames();
    /* The worker's shutdown functions and buffered output are the worker's:
     * run or flushed here, they would happen twice. */
    php_free_shutdown_functions();
    php_output_discard_all();
    RETURN_LONG(0);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_task_exit, 0, 1, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, status, IS_LONG, 1)
ZEND_END_ARG_INFO()

/* Leaves the task now: no destructors, no shutdown functions, no flush.
 * Null: the status PHP would exit with (exit(3), 255 after a fatal error). */
PHP_FUNCTION(lrpm_task_exit)
{
    zend_long status = 0;
    bool status_is_null = true;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_LONG_OR_NULL(status, status_is_null)
    ZEND_PARSE_PARAMETERS_END();
    if (strcmp(process_kind, "task") != 0) {
        zend_throw_error(NULL, "Lrpm\\Internal\\task_exit() is only for a task process");
        RETURN_THROWS();
    }
    _exit(status_is_null ? EG(exit_status) : (int)(status & 0xff));
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_task_reap, 0, 2, IS_ARRAY, 1)
    ZEND_ARG_TYPE_INFO(0, pid, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, block, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

/* Null while the task runs (and `block` is false); else how it ended:
 * ["code" => int|null, "signal" => int|null, "core" => bool], or
 * ["error" => string] when it cannot be waited for. */
PHP_FUNCTION(lrpm_task_reap)
{
    zend_long pid;
    bool block;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_LONG(pid)
        Z_PARAM_BOOL(block)
    ZEND_PARSE_PARAMETERS_END();
    int status = 0;
    pid_t got;
    do {
        got = waitpid((pid_t)pid, &status, block ? 0 : WNOHANG);
    } while (got < 0 && errno == EINTR && block);
    if (got == 0 || (got < 0 && errno == EINTR)) RETURN_NULL();
    array_init(return_value);
    if (got < 0) {
        add_assoc_string(return_value, "error", strerror(errno));
        return;
    }
    if (WIFEXITED(status)) {
        add_assoc_long(return_value, "code", WEXITSTATUS(status));
        add_assoc_null(return_value, "signal");
        add_assoc_bool(return_value, "core", 0);
    } else {
        add_assoc_null(return_value, "code");
        add_assoc_long(return_value, "signal", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        add_assoc_bool(return_value, "core", WIFSIGNALED(status) && WCOREDUMP(status));
    }
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_task_kill, 0, 2, _IS_BOOL, 0)
    ZEND_ARG_TYPE_INFO(0, pid, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, signal, IS_LONG, 0)
ZEND_END_ARG_INFO()

PHP_FUNCTION(lrpm_task_kill)
{
    zend_long pid, signo;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_LONG(pid)
        Z_PARAM_LONG(signo)
    ZEND_PARSE_PARAMETERS_END();
    /* Never a group or every process: only a task's own pid. */
    if (pid <= 0 || signo < 0 || signo >= NSIG) RETURN_FALSE;
    RETURN_BOOL(kill((pid_t)pid, (int)signo) == 0);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_stop_grace_left, 0, 0, IS_DOUBLE, 1)
ZEND_END_ARG_INFO()

/* Seconds left of the stop's grace (0 once it passed); null without a
 * pending stop or a grace. */
PHP_FUNCTION(lrpm_stop_grace_left)
{
    ZEND_PARSE_PARAMETERS_NONE();
    long long left = stop_grace_left_ns();
    if (left < 0) RETURN_NULL();
    RETURN_DOUBLE((double)left / 1e9);
}

/* The first pid slot holding `from` gets `to` (0: a free slot). */
static void swap_task_pid(lrpm_shared_page *page, uint64_t from, uint64_t to)
{
    for (int i = 0; i < LRPM_TASK_PIDS; i++) {
        if (__atomic_load_n(&page->task_pids[i], __ATOMIC_RELAXED) == from) {
            __atomic_store_n(&page->task_pids[i], to, __ATOMIC_RELAXED);
            return;
        }
    }
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_task_note, 0, 2, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO(0, event, IS_LONG, 0)
    ZEND_ARG_TYPE_INFO(0, pid, IS_LONG, 0)
ZEND_END_ARG_INFO()

/* A task started or ended, for the supervisor (status, metrics): counted
 * in the worker's shared page. Only the worker writes it. */
PHP_FUNCTION(lrpm_task_note)
{
    zend_long event, pid;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_LONG(event)
        Z_PARAM_LONG(pid)
    ZEND_PARSE_PARAMETERS_END();
    lrpm_shared_page *page = own_shared_page();
    if (!page) return;
    switch (event) {
    case LRPM_TASK_STARTED:
        __atomic_fetch_add(&page->tasks_started, 1, __ATOMIC_RELAXED);
        swap_task_pid(page, 0, (uint64_t)pid);
        __atomic_fetch_add(&page->tasks_running, 1, __ATOMIC_RELEASE);
        break;
    case LRPM_TASK_SUCCEEDED:
    case LRPM_TASK_FAILED:
    case LRPM_TASK_TIMED_OUT:
        if (event == LRPM_TASK_FAILED) __atomic_fetch_add(&page->tasks_failed, 1, __ATOMIC_RELAXED);
        if (event == LRPM_TASK_TIMED_OUT) __atomic_fetch_add(&page->tasks_timed_out, 1, __ATOMIC_RELAXED);
        swap_task_pid(page, (uint64_t)pid, 0);
        if (__atomic_load_n(&page->tasks_running, __ATOMIC_RELAXED) > 0) {
            __atomic_fetch_sub(&page->tasks_running, 1, __ATOMIC_RELEASE);
        }
        break;
    default:
        break;
    }
}

const zend_function_entry lrpm_task_functions[] = {
    LRPM_FENTRY("Lrpm\\Internal\\task_fork", zif_lrpm_task_fork, arginfo_lrpm_task_fork)
    LRPM_FENTRY("Lrpm\\Internal\\task_exit", zif_lrpm_task_exit, arginfo_lrpm_task_exit)
    LRPM_FENTRY("Lrpm\\Internal\\task_reap", zif_lrpm_task_reap, arginfo_lrpm_task_reap)
    LRPM_FENTRY("Lrpm\\Internal\\task_kill", zif_lrpm_task_kill, arginfo_lrpm_task_kill)
    LRPM_FENTRY("Lrpm\\Internal\\task_note", zif_lrpm_task_note, arginfo_lrpm_task_note)
    LRPM_FENTRY("Lrpm\\Internal\\stop_grace_left", zif_lrpm_stop_grace_left, arginfo_lrpm_stop_grace_left)
    ZEND_FE_END
};
