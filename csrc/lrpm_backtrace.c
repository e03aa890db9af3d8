/*
 * The worker's PHP stack on demand (`lrpmctl backtrace`, the watchdog, a
 * stop that runs into its SIGKILL) and its heartbeat (Lrpm\progress()).
 *
 * The supervisor stores a new number in the page's backtrace_asked and
 * sends lrpm_backtrace_signal(). Who answers depends on where the signal
 * finds the worker:
 *
 * - in native code (an internal function's frame is the current one: a
 *   blocking fread(), sleep(), a database call, a long sort()): the PHP
 *   frames are not moving, since the VM is suspended in that call, so the
 *   handler writes the stack right there, with nothing but reads of the
 *   frames and stores into the page (no allocation, no stdio);
 * - in the VM (user code running, a tight loop): the handler sets
 *   EG(vm_interrupt), and the VM calls zend_interrupt_function at the next
 *   loop back-edge or function entry, with the current line saved; the
 *   stack is written there;
 * - outside a PHP request (starting, ending): the handler says so.
 *
 * The signal is a real-time one (no PHP code or extension uses them), with
 * SA_RESTART, and the waits the binary exports (lrpm_waits.c) resume a
 * poll, select or sleep that it alone interrupted: asking for a backtrace
 * does not change what the worker's code sees.
 */
#include "lrpm_shim_internal.h"

#include <Zend/zend_interfaces.h>

#include <errno.h>
#include <string.h>
#include <time.h>

/* How many backtrace signals arrived (the waits compare it around a wait). */
volatile sig_atomic_t backtrace_signals = 0;
/* A request the VM interrupt answers. */
static volatile sig_atomic_t backtrace_pending = 0;
/* The stack is being written (normal context): the handler leaves it be. */
static volatile sig_atomic_t backtrace_writing = 0;

int lrpm_backtrace_signal(void)
{
    /* glibc keeps the first real-time signals for itself; SIGRTMIN is past
     * them. +4 leaves room for other embedders' conventional SIGRTMIN+n. */
    return SIGRTMIN + 4;
}

/* --- An append-only text buffer, async-signal-safe ------------------- */

typedef struct {
    char *text;
    size_t used, room;
    bool full;
} text_buffer;

static void put_bytes(text_buffer *out, const char *bytes, size_t len)
{
    if (out->full) return;
    size_t fits = out->room - out->used;
    if (len > fits) {
        len = fits;
        out->full = true;
    }
    memcpy(out->text + out->used, bytes, len);
    out->used += len;
}

static void put_text(text_buffer *out, const char *text) { put_bytes(out, text, strlen(text)); }

/* A zend_string, cut at `max` bytes, control characters shown as '?'. */
static void put_name(text_buffer *out, const zend_string *name, size_t max)
{
    size_t len = ZSTR_LEN(name);
    const char *val = ZSTR_VAL(name);
    bool cut = len > max;
    if (cut) len = max;
    for (size_t i = 0; i < len && !out->full; i++) {
        char c = (unsigned char)val[i] < 0x20 ? '?' : val[i];
        put_bytes(out, &c, 1);
    }
    if (cut) put_text(out, "...");
}

static void put_uint(text_buffer *out, uint64_t value)
{
    char digits[24];
    size_t at = sizeof(digits);
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    put_bytes(out, digits + at, sizeof(digits) - at);
}

/* --- The stack --------------------------------------------------------- */

static void put_type(text_buffer *out, zval *value)
{
    if (Z_TYPE_P(value) == IS_REFERENCE) value = Z_REFVAL_P(value);
    switch (Z_TYPE_P(value)) {
    case IS_UNDEF: put_text(out, "unset"); break;
    case IS_NULL: put_text(out, "null"); break;
    case IS_FALSE: put_text(out, "false"); break;
    case IS_TRUE: put_text(out, "true"); break;
    case IS_LONG: put_text(out, "int"); break;
    case IS_DOUBLE: put_text(out, "float"); break;
    case IS_STRING: put_text(out, "string"); break;
    case IS_ARRAY: put_text(out, "array"); break;
    case IS_OBJECT: put_name(out, Z_OBJCE_P(value)->name, 120); break;
    case IS_RESOURCE: put_text(out, "resource"); break;
    default: put_text(out, "?"); break;
    }
}

/* The arguments' types: for a user function the extra arguments (past
 * the declared ones) sit after its variables and temporaries. */
#define ARGUMENTS_SHOWN 8
static void put_arguments(text_buffer *out, zend_execute_data *frame)
{
    zend_function *func = frame->func;
    uint32_t count = ZEND_CALL_NUM_ARGS(frame);
    uint32_t declared = func->common.num_args;
    put_text(out, "(");
    for (uint32_t i = 0; i < count && i < ARGUMENTS_SHOWN; i++) {
        if (i) put_text(out, ", ");
        zval *arg;
        if (ZEND_USER_CODE(func->type) && i >= declared) {
            arg = ZEND_CALL_VAR_NUM(frame, func->op_array.last_var + func->op_array.T + (i - declared));
        } else {
            arg = ZEND_CALL_ARG(frame, i + 1);
        }
        put_type(out, arg);
    }
    if (count > ARGUMENTS_SHOWN) {
        put_text(out, ", ... ");
        put_uint(out, count - ARGUMENTS_SHOWN);
        put_text(out, " more");
    }
    put_text(out, ")");
}

static void put_function(text_buffer *out, zend_execute_data *frame)
{
    zend_function *func = frame->func;
    if (!func->common.function_name) {
        put_text(out, "{main}");
        return;
    }
    if (func->common.scope) {
        put_name(out, func->common.scope->name, 120);
        put_text(out, Z_TYPE(frame->This) == IS_OBJECT ? "->" : "::");
    }
    put_name(out, func->common.function_name, 120);
    put_arguments(out, frame);
}

/* Where a user frame is: its current line (saved at the call it is in, or
 * at the VM interrupt); the function's first line if none is saved yet. */
static uint32_t frame_line(zend_execute_data *frame)
{
    zend_op_array *code = &frame->func->op_array;
    const zend_op *at = frame->opline;
    if (at && at >= code->opcodes && at < code->opcodes + code->last) return at->lineno;
    return code->line_start;
}

#define FRAMES_SHOWN 40
#define FRAMES_COUNTED 100000

/* One line per frame, innermost first:
 *   #0 fread(resource, int) in native code
 *   #1 Consumer->cycle() at /app/src/Consumer.php:42 */
static void put_stack(text_buffer *out, zend_execute_data *frame, const char *where)
{
    put_text(out, where);
    put_text(out, "\n");
    uint32_t shown = 0, total = 0;
    for (; frame && total < FRAMES_COUNTED; frame = frame->prev_execute_data) {
        if (!frame->func) continue;
        total++;
        if (shown >= FRAMES_SHOWN) continue;
        put_text(out, "#");
        put_uint(out, shown++);
        put_text(out, " ");
        put_function(out, frame);
        if (ZEND_USER_CODE(frame->func->type)) {
            put_text(out, " at ");
            if (frame->func->op_array.filename) put_name(out, frame->func->op_array.filename, 400);
            put_text(out, ":");
            put_uint(out, frame_line(frame));
        } else {
            put_text(out, " in native code");
        }
        put_text(out, "\n");
    }
    if (total > shown) {
        put_text(out, "... ");
        put_uint(out, total - shown);
        put_text(out, total >= FRAMES_COUNTED ? "+ more frames\n" : " more frames\n");
    }
}

/* Writes the answer to request `asked` and publishes it. */
static void answer(lrpm_shared_page *page, uint64_t asked, zend_execute_data *frame, const char *where)
{
    text_buffer out = {page->backtrace_text, 0, LRPM_BACKTRACE_BYTES, false};
    if (frame) {
        put_stack(&out, frame, where);
    } else {
        put_text(&out, where);
        put_text(&out, "\n");
    }
    if (out.full) {
        static const char cut[] = "\n[cut: the page holds 3072 bytes]\n";
        out.used = LRPM_BACKTRACE_BYTES - (sizeof(cut) - 1);
        memcpy(out.text + out.used, cut, sizeof(cut) - 1);
        out.used = LRPM_BACKTRACE_BYTES;
    }
    __atomic_store_n(&page->backtrace_length, (uint64_t)out.used, __ATOMIC_RELAXED);
    __atomic_store_n(&page->backtrace_answered, asked, __ATOMIC_RELEASE);
}

static bool in_native_code(zend_execute_data *frame)
{
    return frame && frame->func && frame->func->type == ZEND_INTERNAL_FUNCTION;
}

static bool php_request_running = false;

static void on_backtrace_signal(int signo)
{
    (void)signo;
    int saved_errno = errno;
    backtrace_signals++;
    lrpm_shared_page *page = own_shared_page();
    if (page && !backtrace_writing) {
        uint64_t asked = __atomic_load_n(&page->backtrace_asked, __ATOMIC_ACQUIRE);
        if (asked != __atomic_load_n(&page->backtrace_answered, __ATOMIC_RELAXED)) {
            zend_execute_data *frame = php_request_running ? EG(current_execute_data) : NULL;
            if (!frame) {
                answer(page, asked, NULL, "not running PHP code: the worker's PHP request is starting or ending");
            } else if (in_native_code(frame)) {
                answer(page, asked, frame, "in native code (a call into PHP's C code or an extension)");
            } else {
                backtrace_pending = 1;
                zend_atomic_bool_store_ex(&EG(vm_interrupt), true);
            }
        }
    }
    errno = saved_errno;
}

static void (*interrupt_before)(zend_execute_data *execute_data) = NULL;

static void on_vm_interrupt(zend_execute_data *execute_data)
{
    lrpm_shared_page *page = own_shared_page();
    while (backtrace_pending && page) {
        backtrace_pending = 0;
        backtrace_writing = 1;
        uint64_t asked = __atomic_load_n(&page->backtrace_asked, __ATOMIC_ACQUIRE);
        if (asked != __atomic_load_n(&page->backtrace_answered, __ATOMIC_RELAXED)) {
            answer(page, asked, EG(current_execute_data), "running PHP code");
        }
        backtrace_writing = 0;
        /* A request that came while this one was written is answered too. */
        if (__atomic_load_n(&page->backtrace_asked, __ATOMIC_ACQUIRE) != asked) backtrace_pending = 1;
    }
    if (interrupt_before) interrupt_before(execute_data);
}

/* In the child, once its PHP request runs: the handler, the VM interrupt
 * hook (before whatever pcntl put there), and the flag that lets the
 * supervisor send the signal. Returns false (errno set) if sigaction failed. */
bool backtrace_answers_start(void)
{
    backtrace_pending = 0;
    backtrace_writing = 0;
    if (zend_interrupt_function != on_vm_interrupt) {
        interrupt_before = zend_interrupt_function;
        zend_interrupt_function = on_vm_interrupt;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_backtrace_signal;
    sa.sa_flags = SA_RESTART;
    if (sigaction(lrpm_backtrace_signal(), &sa, NULL) != 0) return false;
    php_request_running = true;
    lrpm_shared_page *page = own_shared_page();
    if (page) __atomic_fetch_or(&page->flags, (uint64_t)LRPM_FLAG_BACKTRACE_READY, __ATOMIC_RELEASE);
    return true;
}

/* Before the request shuts down: frames are about to go away. A request
 * arriving from now on is answered "not running PHP code" by the handler. */
void backtrace_answers_end(void) { php_request_running = false; }

/* --- Lrpm\progress() ---------------------------------------------------- */

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_lrpm_progress, 0, 0, IS_VOID, 0)
    ZEND_ARG_TYPE_INFO_WITH_DEFAULT_VALUE(0, what, IS_STRING, 0, "\"\"")
ZEND_END_ARG_INFO()

/* A long cycle says it is still making progress (and optionally what it
 * is doing): status, metrics and progressTimeoutSeconds read the time. */
static PHP_FUNCTION(lrpm_progress)
{
    zend_string *what = NULL;
    ZEND_PARSE_PARAMETERS_START(0, 1)
        Z_PARAM_OPTIONAL
        Z_PARAM_STR(what)
    ZEND_PARSE_PARAMETERS_END();
    lrpm_shared_page *page = own_shared_page();
    if (!page) return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t seq = __atomic_load_n(&page->progress_note_seq, __ATOMIC_RELAXED);
    __atomic_store_n(&page->progress_note_seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    size_t len = what ? ZSTR_LEN(what) : 0;
    if (len > LRPM_PROGRESS_NOTE_BYTES - 1) len = LRPM_PROGRESS_NOTE_BYTES - 1;
    if (len) memcpy(page->progress_note, ZSTR_VAL(what), len);
    page->progress_note[len] = '\0';
    __atomic_store_n(&page->progress_note_seq, seq + 2, __ATOMIC_RELEASE);
    __atomic_fetch_add(&page->progress_calls, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&page->progress_ns, (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec,
                     __ATOMIC_RELEASE);
}

const zend_function_entry lrpm_backtrace_functions[] = {
    LRPM_FENTRY("Lrpm\\progress", zif_lrpm_progress, arginfo_lrpm_progress)
    ZEND_FE_END
};
