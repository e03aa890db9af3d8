#!/usr/bin/env bash
# Checks the lrpm-host image against a real Docker engine: `make docker-test`
# (not part of `make test`). Every wait polls a condition until a deadline.
#
#   tests/docker/check.sh [IMAGE]          (default lrpm-host:latest)
#   tests/docker/check.sh IMAGE static     the image of Dockerfile.static
#
# 0. The image's lrpm-host finds every shared library it links, and says
#    which PHP it holds. With `static`: PHP 8.x is inside the binary, and
#    the image has no libphp and no php at all.
# 1. The example farm as the image runs it: lrpm-host is PID 1, as the
#    image's non-root user; its workers run; `docker exec C lrpmctl status`
#    answers on the default socket; the image's HEALTHCHECK passes; an
#    orphan re-parented to PID 1 is reaped; `docker stop` stops every worker
#    gracefully and lrpm-host exits 0, well within the jobs' grace.
# 2. `lrpm-host check` on the example farm exits 0.
# 3. Under `docker run --init` (tini as PID 1) with --subreaper: the SIGTERM
#    tini forwards stops the farm gracefully, exit 0.
# 4. `docker run --read-only` with tmpfs on /tmp, /run/lrpm-host and
#    /app/var, as docs/deploy.md suggests: the socket stays in /run/lrpm-host.
# 5. A worker that blocks SIGTERM (tests/docker/stubborn-farm.php): lrpm-host
#    SIGKILLs it at its shutdownTimeoutSeconds and exits 0 before docker's
#    own timeout; and a second SIGTERM kills it at once.
set -euo pipefail

image=${1:-lrpm-host:latest}
static=${2:-}
[ -z "$static" ] || [ "$static" = static ] || { echo "usage: $0 [IMAGE [static]]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
prefix=lrpm-check-$$
containers=()
passed=0
current="" # the container whose logs a failure shows

cleanup() {
    local c
    for c in "${containers[@]}"; do
        docker rm -f "$c" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

ms_now() { echo $(($(date +%s%N) / 1000000)); }

fail() {
    echo "FAIL: $*" >&2
    if [ -n "$current" ]; then
        echo "--- last lines of docker logs $current:" >&2
        docker logs --tail 40 "$current" 2>&1 | sed 's/^/    /' >&2 || true
    fi
    echo "$passed passed, 1 failed"
    exit 1
}

ok() {
    passed=$((passed + 1))
    echo "ok $passed - $*"
}

# wait_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every 100 ms until
# it succeeds; fails the check after SECONDS.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$(($(ms_now) + seconds * 1000))
    until "$@" >/dev/null 2>&1; do
        [ "$(ms_now)" -lt "$deadline" ] || fail "$what (not within ${seconds}s)"
        sleep 0.1
    done
}

# new_container NAME DOCKER-CREATE-ARGS...: creates (not starts) a container,
# removed at exit; a failure from now on shows its logs.
new_container() {
    local name=$1
    shift
    containers+=("$name")
    current=$name
    docker create --name "$name" "$@" >/dev/null
}

# A field of a job's state in `lrpmctl --json status` (run in the
# container), read with the host's php (the static image has none):
# "absent" if no such job.
job_state() {
    docker exec "$1" lrpmctl --json status | php -r '
        $doc = json_decode(stream_get_contents(STDIN), true);
        echo $doc[$argv[1]]["state"][$argv[2]] ?? "absent";' -- "$2" "$3"
}
job_running() { [ "$(job_state "$1" "$2" status)" = running ]; }

proc_field() { # CONTAINER PID FIELD: a line of /proc/PID/status
    docker exec "$1" awk -v f="$3:" '$1 == f { print $2 }' "/proc/$2/status"
}
cmdline() { docker exec "$1" cat "/proc/$2/cmdline" | tr '\0' ' '; }
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$1"; }
is_exited() { [ "$(docker inspect -f '{{.State.Status}}' "$1")" = exited ]; }
# Docker may still be copying a container's last lines when `docker stop`
# returns: log lines are waited for, not read once.
logs_have() { docker logs "$1" 2>&1 | grep -qF -- "$2"; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }
orphan_gone() { ! docker exec "$1" test -e "/proc/$2"; }

# docker stop with a timeout far above the farm's own, so that a SIGKILL
# from docker would show (exit 137, after 60 s). Prints the milliseconds taken.
timed_stop() {
    local t0
    t0=$(ms_now)
    docker stop -t 60 "$1" >/dev/null
    echo $(($(ms_now) - t0))
}

docker image inspect "$image" >/dev/null 2>&1 || fail "no image $image (make docker)"
echo "# image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

# ---------------------------------------------------------------- 0. the binary
current=""
# `ldd` is a shell script of libc-bin (in every Debian image); run as root.
libs=$(docker run --rm --user 0 --entrypoint ldd "$image" /usr/local/bin/lrpm-host 2>&1) \
    || fail "ldd /usr/local/bin/lrpm-host in the image exited $?: $libs"
! grep -q "not found" <<<"$libs" || fail "lrpm-host lacks shared libraries in the image: $(grep "not found" <<<"$libs")"
version=$(docker run --rm "$image" --version 2>&1) || fail "lrpm-host --version exited $?: $version"
ok "ldd: lrpm-host finds all $(grep -c '=> /' <<<"$libs") shared libraries it loads; $version"
if [ "$static" = static ]; then
    [[ $version == *"(PHP 8."* ]] || fail "lrpm-host --version names no PHP: $version"
    ! grep -q libphp <<<"$libs" || fail "the static lrpm-host links a libphp: $(grep libphp <<<"$libs")"
    found=$(docker run --rm --user 0 --entrypoint sh "$image" -c \
        'find / -xdev \( -name "libphp*" -o -name "php*.ini" -o -name "php" -o -name "php[0-9]*" -o -name "opcache.so" \) -print; command -v php') || true
    [ -z "$found" ] || fail "the static image has PHP files: $found"
    ok "static: PHP inside lrpm-host; no libphp, php, php.ini or opcache.so in the image"
fi

# ---------------------------------------------------------------- 1. example farm
c=$prefix-farm
new_container "$c" --health-interval=1s "$image"
docker start "$c" >/dev/null
wait_until 30 "heartbeat and spool running (lrpmctl status in $c)" \
    eval 'job_running "$c" heartbeat && job_running "$c" spool'
ok "example farm up: heartbeat and spool running"

title=$(cmdline "$c" 1)
[[ $title == "lrpm-host: supervisor /app/farm.php"* ]] || fail "PID 1 is '$title', not lrpm-host's supervisor"
uid=$(proc_field "$c" 1 Uid)
[ "$uid" = 10001 ] || fail "PID 1 runs as uid $uid, not 10001 (lrpm)"
heartbeat=$(job_state "$c" heartbeat pid)
spool=$(job_state "$c" spool pid)
[ "$(proc_field "$c" "$heartbeat" PPid)" = 1 ] || fail "worker $heartbeat is not a child of PID 1"
ok "lrpm-host is PID 1 as uid 10001, its workers are its children"

table=$(docker exec "$c" lrpmctl status) || fail "docker exec lrpmctl status exited $?"
grep -q '^heartbeat .* running ' <<<"$table" || fail "lrpmctl status has no running heartbeat row: $table"
socket=$(docker exec "$c" stat -c '%U %a %F' /run/lrpm-host/control.sock)
[ "$socket" = "lrpm 600 socket" ] || fail "control socket is '$socket'"
ok "docker exec lrpmctl status answers (socket /run/lrpm-host/control.sock, lrpm 600)"

wait_until 30 "HEALTHCHECK (lrpmctl version) healthy" healthy "$c"
ok "HEALTHCHECK healthy"

# An orphan: the exec'd shell exits at once, leaving `sleep` to PID 1.
orphan=$(docker exec "$c" sh -c 'sleep 2 >/dev/null 2>&1 & echo $!')
parent=$(proc_field "$c" "$orphan" PPid)
[ "$parent" = 1 ] || fail "orphan $orphan has parent $parent, not 1"
wait_until 15 "orphan $orphan reaped by PID 1 (state: $(proc_field "$c" "$orphan" State 2>/dev/null))" \
    orphan_gone "$c" "$orphan"
ok "orphan $orphan re-parented to lrpm-host and reaped when it exited"

took=$(timed_stop "$c")
[ "$(exit_code "$c")" = 0 ] || fail "exit code $(exit_code "$c") after docker stop, not 0"
[ "$took" -lt 10000 ] || fail "docker stop took ${took} ms, more than the jobs' 10 s grace"
for line in "received SIGTERM" \
    "job heartbeat (pid $heartbeat) stopped: exit code 0 (clean stop)" \
    "job spool (pid $spool) stopped: exit code 0 (clean stop)" \
    "lrpm-host shut down cleanly"; do
    wait_until 10 "docker logs show '$line'" logs_have "$c" "$line"
done
! logs_have "$c" "sending SIGKILL" || fail "a worker had to be SIGKILLed"
ok "docker stop: workers stopped cleanly, exit 0 in ${took} ms"

# ---------------------------------------------------------------- 2. check
current=""
report=$(docker run --rm "$image" check /app/farm.php 2>&1) || fail "lrpm-host check exited $?: $report"
ok "lrpm-host check /app/farm.php exits 0"

# ---------------------------------------------------------------- 3. --init
c=$prefix-init
new_container "$c" --init "$image" --subreaper /app/farm.php
docker start "$c" >/dev/null
wait_until 30 "heartbeat running under --init" job_running "$c" heartbeat
[[ $(cmdline "$c" 1) == *docker-init* ]] || fail "PID 1 is '$(cmdline "$c" 1)', not docker-init"
took=$(timed_stop "$c")
[ "$(exit_code "$c")" = 0 ] || fail "exit code $(exit_code "$c") under --init, not 0"
wait_until 10 "clean shutdown logged under --init" logs_have "$c" "lrpm-host shut down cleanly"
ok "docker run --init + --subreaper: SIGTERM forwarded, clean stop in ${took} ms"

# ---------------------------------------------------------------- 4. read-only root
c=$prefix-ro
new_container "$c" --read-only --tmpfs /tmp \
    --tmpfs /run/lrpm-host:uid=10001,gid=10001,mode=0700 --tmpfs /app/var:uid=10001,gid=10001 "$image"
docker start "$c" >/dev/null
wait_until 30 "spool running on a read-only root" job_running "$c" spool
wait_until 30 "the spool consumer consumed its first file" logs_have "$c" "consumed hello-0.job"
logs_have "$c" "control_socket=/run/lrpm-host/control.sock" || fail "the socket is not in the /run/lrpm-host tmpfs"
took=$(timed_stop "$c")
[ "$(exit_code "$c")" = 0 ] || fail "exit code $(exit_code "$c") on a read-only root, not 0"
ok "read-only root with tmpfs /tmp, /run/lrpm-host, /app/var: runs, lrpmctl answers, clean stop"

# ---------------------------------------------------------------- 5. stubborn worker
# The escalation: lrpm-host SIGKILLs it after its 2 s, not docker after 60 s.
c=$prefix-stubborn
new_container "$c" -e STUBBORN_TIMEOUT=2 "$image" /tmp/stubborn-farm.php
docker cp "$here/stubborn-farm.php" "$c:/tmp/stubborn-farm.php"
docker start "$c" >/dev/null
wait_until 30 "stubborn worker running" logs_have "$c" "[stubborn] started, SIGTERM blocked"
took=$(timed_stop "$c")
[ "$(exit_code "$c")" = 0 ] || fail "exit code $(exit_code "$c") after the escalation, not 0"
wait_until 10 "escalation logged" logs_have "$c" "did not stop within 2s of SIGTERM, sending SIGKILL"
wait_until 10 "clean shutdown logged" logs_have "$c" "lrpm-host shut down cleanly"
[ "$took" -ge 2000 ] && [ "$took" -lt 10000 ] || fail "escalated stop took ${took} ms, expected 2 to 10 s"
ok "a worker ignoring SIGTERM is SIGKILLed at its shutdownTimeoutSeconds (2 s): exit 0 in ${took} ms"

# A second SIGTERM while the first stop waits (60 s grace) kills at once.
c=$prefix-second
new_container "$c" "$image" /tmp/stubborn-farm.php
docker cp "$here/stubborn-farm.php" "$c:/tmp/stubborn-farm.php"
docker start "$c" >/dev/null
wait_until 30 "stubborn worker running" logs_have "$c" "[stubborn] started, SIGTERM blocked"
docker kill --signal TERM "$c" >/dev/null
wait_until 10 "first SIGTERM: shutdown begun" logs_have "$c" "shutting down"
t0=$(ms_now)
docker kill --signal TERM "$c" >/dev/null
wait_until 10 "exit after the second SIGTERM" is_exited "$c"
took=$(($(ms_now) - t0))
wait_until 10 "second stop logged" logs_have "$c" "second stop request: killing every process now"
[ "$(exit_code "$c")" = 0 ] || fail "exit code $(exit_code "$c") after a second SIGTERM, not 0"
ok "second SIGTERM kills at once: exit 0 in ${took} ms"

current=""
echo "$passed passed, 0 failed"
