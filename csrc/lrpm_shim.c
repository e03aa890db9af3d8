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
lrpm_shared_page *own_shared_page(void)
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

bool parent_changed(void)
{
    /* A task's parent is its worker, whose death kills it (PDEATHSIG). */
    if (strcmp(process_kind, "task") == 0) return false;
    return current_spec && current_spec->parent_pid > 0 && getppid() != current_spec->parent_pid;
}

/* ------------------------------------------------------------------ */
/* Process title                                                      */
/* ------------------------------------------------------------------ */

static char *title_area = NULL;
static size_t title_area_len = 0;
char *current_title = NULL;

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

static size_t function_count(const zend_function_entry *table)
{
    size_t n = 0;
    while (table[n].fname) n++;
    return n;
}

/* The SAPI takes one table: the host's functions, the tasks', the
 * heartbeat's. Built
 * once, for the process's life. */
static const zend_function_entry *all_host_functions(void)
{
    size_t host = function_count(lrpm_host_functions), tasks = function_count(lrpm_task_functions);
    size_t backtrace = function_count(lrpm_backtrace_functions);
    zend_function_entry *all = calloc(host + tasks + backtrace + 1, sizeof(zend_function_entry));
    if (!all) return lrpm_host_functions;
    memcpy(all, lrpm_host_functions, host * sizeof(zend_function_entry));
    memcpy(all + host, lrpm_task_functions, tasks * sizeof(zend_function_entry));
    memcpy(all + host + tasks, lrpm_backtrace_functions, backtrace * sizeof(zend_function_entry));
    return all;
}

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
    lrpm_sapi_module.additional_functions = all_host_functions();
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
    release_checked_at_ns = 0;
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
    if (!backtrace_answers_start()) child_setup_failed(spec, "sigaction(backtrace signal)");

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
    /* A task (Lrpm\Task) that left its code through exit() or a fatal
     * error: the request's end would run the worker's shutdown functions
     * and destructors, and flush its output buffers, in a copy of the
     * worker. It leaves without any of that. */
    if (strcmp(process_kind, "task") == 0) _exit(status & 0xff);

    backtrace_answers_end();
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
