/*
 * The stop's grace and the waits it bounds: the stop state the signal
 * handlers set, and the poll(), select() and sleeps the binary exports
 * (build.rs) so that libphp's and its extensions' calls land here.
 */
#ifndef _GNU_SOURCE
# define _GNU_SOURCE /* ppoll */
#endif
#include "lrpm_shim_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t stop_requested = 0;
volatile long long stop_requested_at_ns = 0;
volatile sig_atomic_t stop_signals = 0;

/* The signal counts before a wait, to tell afterwards whether a backtrace
 * request alone interrupted it (lrpm_backtrace.c): then the wait resumes,
 * so that asking for a stack changes nothing the worker's code sees. A
 * signal of another kind arriving at the same moment is the one case
 * taken for a backtrace's. */
typedef struct {
    sig_atomic_t backtraces, stops;
} signal_counts;

static signal_counts signals_now(void) { return (signal_counts){backtrace_signals, stop_signals}; }

static bool only_a_backtrace_since(signal_counts before, long result)
{
    return result < 0 && errno == EINTR && backtrace_signals != before.backtraces && stop_signals == before.stops;
}

static long long monotonic_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Called from the stop handlers: clock_gettime is async-signal-safe. */
void note_stop_request(void)
{
    if (!stop_requested_at_ns) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        stop_requested_at_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    stop_requested = 1;
    stop_signals++;
    /* Not the page of a process the worker forked itself. */
    lrpm_shared_page *page = current_spec && !forked_by_worker ? current_spec->shared_page : NULL;
    if (page) __atomic_fetch_or(&page->flags, (uint64_t)LRPM_FLAG_STOP_SIGNALLED, __ATOMIC_RELAXED);
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
long long stop_grace_left_ns(void)
{
    if (!(stop_requested && stop_requested_at_ns && current_spec && current_spec->stop_grace_ms >= 0)) return -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long now_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    long long deadline_ns = stop_requested_at_ns + current_spec->stop_grace_ms * 1000000LL;
    return deadline_ns > now_ns ? deadline_ns - now_ns : 0;
}

/* Caps a wait of `wait` (NULL: forever) at the grace left; returns what to
 * wait for (`wait`, or NULL). */
static struct timespec *capped_wait(struct timespec *wait, long long left_ns)
{
    if (left_ns < 0) return wait;
    static __thread struct timespec cap;
    if (!wait || (long long)wait->tv_sec * 1000000000LL + wait->tv_nsec > left_ns) {
        cap.tv_sec = (time_t)(left_ns / 1000000000LL);
        cap.tv_nsec = (long)(left_ns % 1000000000LL);
        if (wait) {
            *wait = cap;
            return wait;
        }
        return &cap;
    }
    return wait;
}

/*
 * A wait that begins once the grace is over is a client waiting again
 * after the timeout it was given at the deadline (libcurl's transfer loop,
 * libgearman's retry on EINTR): it would spin on immediate timeouts until
 * the SIGKILL. So the connected stream sockets it waits on are shut down
 * (shutdown(2), both ways): the wait reports them hung up, the client
 * reads end of file, and gives up the way it gives up on a closed
 * connection. Listening sockets, pipes and files are left alone.
 */
static void shut_down_connection(int fd)
{
    int type = 0;
    socklen_t len = sizeof(type);
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return;
    if (type != SOCK_STREAM && type != SOCK_SEQPACKET) return;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) != 0) return;
    shutdown(fd, SHUT_RDWR);
}

/* ppoll(2) with a copy of the wait, which the kernel updates with what is
 * left: a wait that a backtrace request alone interrupted goes on with it. */
static int raw_ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *wait, const sigset_t *mask)
{
    struct timespec copy, *wait_for = NULL;
    if (wait) {
        copy = *wait;
        wait_for = &copy;
    }
    for (;;) {
        signal_counts before = signals_now();
        long result = syscall(SYS_ppoll, fds, nfds, wait_for, mask, _NSIG / 8);
        if (!only_a_backtrace_since(before, result)) return (int)result;
    }
}

static int bounded_ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *wait, const sigset_t *mask)
{
    long long left_ns = stop_grace_left_ns();
    if (left_ns < 0) return raw_ppoll(fds, nfds, wait, mask);
    if (left_ns == 0) {
        for (nfds_t i = 0; i < nfds; i++) shut_down_connection(fds[i].fd);
    }
    struct timespec copy, *wait_for = NULL;
    if (wait) {
        copy = *wait;
        wait_for = &copy;
    }
    return raw_ppoll(fds, nfds, capped_wait(wait_for, left_ns), mask);
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    struct timespec wait;
    struct timespec *wait_for = NULL;
    if (timeout >= 0) {
        wait.tv_sec = timeout / 1000;
        wait.tv_nsec = (long)(timeout % 1000) * 1000000L;
        wait_for = &wait;
    }
    return bounded_ppoll(fds, nfds, wait_for, NULL);
}

int ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *wait, const sigset_t *mask)
{
    return bounded_ppoll(fds, nfds, wait, mask);
}

/* What _FORTIFY_SOURCE builds call instead of poll() and ppoll(). */
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fds_len)
{
    if (fds_len / sizeof(*fds) < nfds) abort();
    return poll(fds, nfds, timeout);
}

int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *wait, const sigset_t *mask, size_t fds_len)
{
    if (fds_len / sizeof(*fds) < nfds) abort();
    return bounded_ppoll(fds, nfds, wait, mask);
}

static void shut_down_connections_in(int nfds, fd_set *readfds, fd_set *writefds, fd_set *exceptfds)
{
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++) {
        if ((readfds && FD_ISSET(fd, readfds)) || (writefds && FD_ISSET(fd, writefds))
            || (exceptfds && FD_ISSET(fd, exceptfds))) {
            shut_down_connection(fd);
        }
    }
}

/* As the pselect6 system call: the wait in `wait` (NULL: forever), updated
 * with what is left. */
static int bounded_pselect(int nfds, fd_set *readfds, fd_set *writefds, fd_set *exceptfds, struct timespec *wait,
                           const sigset_t *mask)
{
    long long left_ns = stop_grace_left_ns();
    if (left_ns == 0) shut_down_connections_in(nfds, readfds, writefds, exceptfds);
    struct timespec *wait_for = capped_wait(wait, left_ns);
    struct {
        const sigset_t *mask;
        size_t size;
    } sigmask = {mask, _NSIG / 8};
    /* The sets are rewritten only by a return other than EINTR; the wait is
     * updated with what is left, so a backtrace's interruption resumes it. */
    for (;;) {
        signal_counts before = signals_now();
        long result = syscall(SYS_pselect6, nfds, readfds, writefds, exceptfds, wait_for, mask ? &sigmask : NULL);
        if (!only_a_backtrace_since(before, result)) return (int)result;
    }
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
    int result = bounded_pselect(nfds, readfds, writefds, exceptfds, wait_for, NULL);
    if (timeout) {
        timeout->tv_sec = wait.tv_sec;
        timeout->tv_usec = (suseconds_t)(wait.tv_nsec / 1000L);
    }
    return result;
}

int pselect(int nfds, fd_set *readfds, fd_set *writefds, fd_set *exceptfds, const struct timespec *timeout,
            const sigset_t *mask)
{
    /* pselect() leaves *timeout as it was. */
    struct timespec wait;
    struct timespec *wait_for = NULL;
    if (timeout) {
        wait = *timeout;
        wait_for = &wait;
    }
    return bounded_pselect(nfds, readfds, writefds, exceptfds, wait_for, mask);
}

/* epoll waits are capped at the grace like the others; the descriptors of
 * an epoll set are not known here, so none is shut down once the grace is
 * over (a client that waits on epoll again and again spins until SIGKILL). */
int epoll_pwait(int epfd, struct epoll_event *events, int maxevents, int timeout, const sigset_t *mask)
{
    long long left_ns = stop_grace_left_ns();
    if (left_ns >= 0) {
        long long left_ms = (left_ns + 999999) / 1000000;
        if (timeout < 0 || timeout > left_ms) timeout = (int)left_ms;
    }
    long long deadline_ns = timeout >= 0 ? monotonic_now_ns() + (long long)timeout * 1000000LL : -1;
    for (;;) {
        signal_counts before = signals_now();
        long result = syscall(SYS_epoll_pwait, epfd, events, maxevents, timeout, mask, _NSIG / 8);
        if (!only_a_backtrace_since(before, result)) return (int)result;
        if (deadline_ns >= 0) {
            long long left_ns = deadline_ns - monotonic_now_ns();
            timeout = left_ns > 0 ? (int)((left_ns + 999999) / 1000000) : 0;
        }
    }
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    return epoll_pwait(epfd, events, maxevents, timeout, NULL);
}

/*
 * Blocking reads of a socket once a stop is pending: ext/sockets'
 * socket_read() (and so Pheanstalk) calls recv() on a blocking socket
 * without a poll() first, and a client that retries after the stop's
 * EINTR (Pheanstalk reconnects and sends its command again) would block
 * there until SIGKILL. So once a stop is pending, a read that would block
 * on a blocking socket first waits (bounded, as poll() is) for data, and
 * fails with ETIMEDOUT when the grace is over; data and end of file that
 * arrive in time are read normally. Reads of files and pipes, and of
 * non-blocking sockets, are the system call.
 */
static bool blocks_on_socket(int fd, int flags)
{
    if (flags & MSG_DONTWAIT) return false;
    int status = fcntl(fd, F_GETFL);
    if (status < 0 || (status & O_NONBLOCK)) return false;
    int type = 0;
    socklen_t len = sizeof(type);
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
}

/* 1: read now; 0: the grace ran out with nothing to read (errno ETIMEDOUT). */
static int wait_for_socket_data(int fd)
{
    for (;;) {
        long long left_ns = stop_grace_left_ns();
        if (left_ns < 0) return 1;
        struct pollfd readable = {fd, POLLIN, 0};
        struct timespec wait = {(time_t)(left_ns / 1000000000LL), (long)(left_ns % 1000000000LL)};
        int ready = raw_ppoll(&readable, 1, &wait, NULL);
        if (ready > 0) return 1;
        if (ready == 0 && left_ns == 0) {
            errno = ETIMEDOUT;
            return 0;
        }
        if (ready < 0 && errno != EINTR) return 1;
    }
}

ssize_t recv(int fd, void *buffer, size_t len, int flags)
{
    if (stop_grace_left_ns() >= 0 && blocks_on_socket(fd, flags) && !wait_for_socket_data(fd)) return -1;
    return (ssize_t)syscall(SYS_recvfrom, fd, buffer, len, flags, NULL, NULL);
}

ssize_t read(int fd, void *buffer, size_t len)
{
    if (stop_grace_left_ns() >= 0 && blocks_on_socket(fd, 0) && !wait_for_socket_data(fd)) return -1;
    return (ssize_t)syscall(SYS_read, fd, buffer, len);
}

/* What _FORTIFY_SOURCE builds call instead of recv() and read(). */
ssize_t __recv_chk(int fd, void *buffer, size_t len, size_t buffer_len, int flags)
{
    if (len > buffer_len) abort();
    return recv(fd, buffer, len, flags);
}

ssize_t __read_chk(int fd, void *buffer, size_t len, size_t buffer_len)
{
    if (len > buffer_len) abort();
    return read(fd, buffer, len);
}

/*
 * PHP loads extensions with RTLD_DEEPBIND (Zend's DL_LOAD), which makes an
 * extension's own dependencies come before the binary in its symbol
 * lookups: libgearman, libpq, libcurl and ext/sockets then bind poll(),
 * recv() and friends to the C library's, not to the waits above (seen with
 * LD_DEBUG=bindings). The binary exports this dlopen(), which libphp binds
 * to, and loads without RTLD_DEEPBIND: every library then finds the
 * binary's waits first, as libphp itself does.
 */
void *dlopen(const char *file, int mode)
{
    static void *(*system_dlopen)(const char *, int) = NULL;
    if (!system_dlopen) system_dlopen = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    return system_dlopen(file, mode & ~RTLD_DEEPBIND);
}

/*
 * Sleeps get the same bound as poll(): a worker whose cycle
 * begins a long sleep after the stop signal arrived (the signal interrupts
 * only a sleep already in progress) would otherwise sit it out until its
 * SIGKILL. Before a stop these are the C library's own: nanosleep() as the
 * system call, usleep() and sleep() on top of it.
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
    struct timespec left, *left_out = remaining ? remaining : &left;
    for (;;) {
        signal_counts before = signals_now();
        long result = syscall(SYS_nanosleep, request, left_out);
        if (!only_a_backtrace_since(before, result)) return result == 0 ? 0 : -1;
        left = *left_out;
        request = &left;
    }
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
