/*
 * The zygote: a process that ran the bootstrap once and forks every worker
 * from itself on the supervisor's request (src/supervisor/zygote.rs is the
 * other end of its socket).
 */
#ifndef _GNU_SOURCE
# define _GNU_SOURCE /* memmem */
#endif
#include "lrpm_shim_internal.h"

#include <main/php.h>
#include <Zend/zend_alloc_sizes.h>
#include <Zend/zend_gc.h>
#include <ext/random/php_random.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
    release_checked_at_ns = 0;
    process_kind = "worker";
    lrpm_title_set(title);
    if (!backtrace_answers_start()) child_setup_failed(current_spec, "sigaction(backtrace signal)");
    /* Each worker draws its own random numbers: the generators seed again
     * from the system's entropy at their next use. */
    RANDOM_G(mt19937_seeded) = false;
    RANDOM_G(combined_lcg_seeded) = false;
}

/*
 * The zygote's loop: waits for requests on the socket and forks a worker
 * for each. Returns the worker's params (JSON) in that worker, and null in
 * the zygote when it must end (the supervisor closed the socket, or a stop).
 * Each worker is forked by a short-lived intermediate, so that it becomes
 * the supervisor's child (the supervisor is a child subreaper): the
 * supervisor reaps, signals and watches its workers as if it forked them.
 */
PHP_FUNCTION(lrpm_zygote_serve)
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
