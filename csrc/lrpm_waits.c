/*
 * The stop's grace and the waits it bounds: the stop state the signal
 * handlers set, and the poll(), select() and sleeps the binary exports
 * (build.rs) so that libphp's and its extensions' calls land here.
 */
#ifndef _GNU_SOURCE
# define _GNU_SOURCE /* ppoll */
#endif
#include "lrpm_shim_internal.h"

#include <errno.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t stop_requested = 0;
volatile long long stop_requested_at_ns = 0;

/* Called from the stop handlers: clock_gettime is async-signal-safe. */
void note_stop_request(void)
{
    if (!stop_requested_at_ns) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        stop_requested_at_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    stop_requested = 1;
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
