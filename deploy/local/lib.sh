# shellcheck shell=bash
# deploy/local/lib.sh - shared functions of the local stack scripts (up, down, status)
# and of tests/run, which starts throw-away Postgres and Redis servers with them.
#
# Source it from bash; it only defines functions and a few constants. It does not
# change shell options: the callers run under `set -euo pipefail` and every function
# here is written to work under it (failures are returned, not left to errexit, so the
# functions also behave inside `if`).
#
# Conventions: messages go to stderr prefixed with "chorus-local:"; functions that
# produce a value print it on stdout; paths given to functions may be relative (they are
# made absolute first). Servers started here listen on 127.0.0.1 only.
#
# Postgres refuses to run as root. When these functions run as root, every Postgres
# binary runs as the system user `chorus` (created on demand, no home, no shell) through
# runuser; otherwise as the calling user.

CHORUS_PG_OS_USER_ROOT=chorus   # the OS user owning clusters when we run as root
CHORUS_PG_SUPERUSER=chorus      # the database superuser created by initdb (-U)

# Debian packages the build, the local stack and the tests need.
CHORUS_DEB_PACKAGES=(
    build-essential cmake pkg-config
    libwebsockets-dev libwebsockets-evlib-ev libhiredis-dev libpq-dev libmsgpack-dev
    libev-dev libssl-dev libcmocka-dev libjansson-dev
    postgresql redis-server prometheus curl
    gnuplot-nox
)

# chorus_log MESSAGE... - prints a progress line to stderr.
chorus_log() {
    printf 'chorus-local: %s\n' "$*" >&2
}

# chorus_die MESSAGE... - prints an error to stderr and exits the (sub)shell with 1.
chorus_die() {
    printf 'chorus-local: error: %s\n' "$*" >&2
    exit 1
}

# chorus_abspath PATH - prints PATH made absolute (the path need not exist; symlinks are
# not resolved, `..` is kept as written).
chorus_abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$(pwd -P)" "${1#./}" ;;
    esac
}

# chorus_is_root - true when running as uid 0.
chorus_is_root() {
    [ "$(id -u)" -eq 0 ]
}

# chorus_as_admin CMD ARGS... - runs CMD as root: directly when we are root, else
# through sudo (non-interactive if there is no terminal). Fails when neither works.
chorus_as_admin() {
    if chorus_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        chorus_log "need root for: $* (not root and no sudo)"
        return 1
    fi
}

# chorus_missing_packages [PKG...] - prints, one per line, the Debian packages among PKG
# (default: CHORUS_DEB_PACKAGES) that are not installed. Uses dpkg-query only.
chorus_missing_packages() {
    local p status
    if [ "$#" -eq 0 ]; then
        set -- "${CHORUS_DEB_PACKAGES[@]}"
    fi
    for p in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        if [ "$status" != installed ]; then
            printf '%s\n' "$p"
        fi
    done
}

# chorus_install_deps [PKG...] - installs the missing ones of PKG (default:
# CHORUS_DEB_PACKAGES, plus anything in CHORUS_EXTRA_PACKAGES, space-separated). Checks
# with dpkg-query first and runs `apt-get update` + `apt-get install` (non-interactive,
# --no-install-recommends, as root or through sudo) only when something is missing.
# Installing postgresql or redis-server may start Debian's own system services on
# their default ports (5432, 6379); nothing of Chorus uses them, and they are left
# alone (neither stopped nor reconfigured).
chorus_install_deps() {
    local -a want missing
    local extra
    if [ "$#" -gt 0 ]; then
        want=("$@")
    else
        want=("${CHORUS_DEB_PACKAGES[@]}")
        read -r -a extra <<<"${CHORUS_EXTRA_PACKAGES:-}"
        want+=("${extra[@]}")
    fi
    mapfile -t missing < <(chorus_missing_packages "${want[@]}")
    if [ "${#missing[@]}" -eq 0 ]; then
        chorus_log "packages: all ${#want[@]} present"
        return 0
    fi
    chorus_log "packages: installing ${missing[*]}"
    chorus_as_admin env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
    chorus_as_admin env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
}

# ---------------------------------------------------------------------------------------
# processes and ports
# ---------------------------------------------------------------------------------------

# chorus_proc_matches PID NEEDLE... - true when process PID exists and its command line
# (/proc/PID/cmdline, arguments joined by spaces) contains every NEEDLE. This is how a
# pid read from a pid file is told apart from an unrelated process that got the same pid
# after ours died.
chorus_proc_matches() {
    local pid=$1 cmdline needle
    shift
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    for needle in "$@"; do
        case $cmdline in *"$needle"*) ;; *) return 1 ;; esac
    done
    return 0
}

# chorus_pidfile_pid PIDFILE NEEDLE... - prints the pid recorded in PIDFILE (first line)
# and succeeds when that process runs and its command line contains every NEEDLE;
# fails (printing nothing) when the file is missing or the pid is dead or foreign.
chorus_pidfile_pid() {
    local pidfile=$1 pid
    shift
    [ -r "$pidfile" ] || return 1
    pid=$(head -n 1 "$pidfile" 2>/dev/null | tr -d '[:space:]')
    chorus_proc_matches "$pid" "$@" || return 1
    printf '%s\n' "$pid"
}

# chorus_wait_gone PID SECONDS - waits until PID has exited (or is a zombie); true when
# it did within SECONDS.
chorus_wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2)) state
    while [ -d "/proc/$pid" ]; do
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
        [ "$state" = Z ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
    return 0
}

# chorus_stop_pid PID SECONDS NAME - sends SIGTERM to PID, waits up to SECONDS for it to
# exit, then sends SIGKILL and waits again. NAME is only for messages. Never signals
# anything but PID itself.
chorus_stop_pid() {
    local pid=$1 secs=$2 name=$3
    kill -TERM "$pid" 2>/dev/null || return 0
    if chorus_wait_gone "$pid" "$secs"; then
        chorus_log "$name: stopped (pid $pid)"
        return 0
    fi
    chorus_log "$name: still running after ${secs}s, sending SIGKILL to pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    chorus_wait_gone "$pid" 5
}

# chorus_port_open PORT [HOST] - true when something accepts TCP connections on
# HOST:PORT (default 127.0.0.1). Pure bash (/dev/tcp), bounded to 2 s.
chorus_port_open() {
    local port=$1 host=${2:-127.0.0.1}
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# chorus_free_port START - prints the first port >= START (up to START+999, at most
# 65535) on which nothing accepts connections on 127.0.0.1. Fails when none is free. A
# port found free can still be taken by someone else before it is used: callers that
# start a server on it should treat "address in use" as retryable.
chorus_free_port() {
    local p=$1 last=$(($1 + 999))
    [ "$last" -le 65535 ] || last=65535
    while [ "$p" -le "$last" ]; do
        if ! chorus_port_open "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
        p=$((p + 1))
    done
    chorus_log "no free port in $1..$last"
    return 1
}

# chorus_wait_http URL SECONDS [PID] - polls URL with curl until it answers 2xx; true
# when it did within SECONDS. With PID, gives up early when that process has exited.
chorus_wait_http() {
    local url=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    while :; do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------------------

# chorus_pg_os_user - prints the OS user that owns and runs our clusters: `chorus` when
# we are root (Postgres will not run as root), else the current user.
chorus_pg_os_user() {
    if chorus_is_root; then
        printf '%s\n' "$CHORUS_PG_OS_USER_ROOT"
    else
        id -un
    fi
}

# chorus_pg_ensure_os_user - as root, creates the system user `chorus` if it does not
# exist (no home directory, no login shell). A no-op when not root.
chorus_pg_ensure_os_user() {
    chorus_is_root || return 0
    id -u "$CHORUS_PG_OS_USER_ROOT" >/dev/null 2>&1 && return 0
    chorus_log "creating system user $CHORUS_PG_OS_USER_ROOT (runs Postgres)"
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$CHORUS_PG_OS_USER_ROOT"
}

# chorus_as_pg CMD ARGS... - runs CMD as the Postgres OS user (see chorus_pg_os_user),
# from / so that a working directory the user cannot enter does not matter.
# stdin/stdout/stderr are passed through, so redirections set up by the caller (as
# root) work even where that user could not open the files itself.
chorus_as_pg() {
    if chorus_is_root; then
        (cd / && runuser -u "$CHORUS_PG_OS_USER_ROOT" -- "$@")
    else
        (cd / && "$@")
    fi
}

# chorus_pg_bindir [DATADIR] - prints the directory of the Postgres server binaries.
# CHORUS_PG_BINDIR overrides. When DATADIR holds a cluster, the version it was created
# with (PG_VERSION) is used; else 15 when installed, else the newest
# /usr/lib/postgresql/*/bin.
chorus_pg_bindir() {
    local real ver dir
    if [ -n "${CHORUS_PG_BINDIR:-}" ]; then
        printf '%s\n' "$CHORUS_PG_BINDIR"
        return 0
    fi
    if [ -n "${1:-}" ]; then
        real=$(readlink -f -- "$1" 2>/dev/null || true)
        if [ -n "$real" ] && [ -r "$real/PG_VERSION" ]; then
            ver=$(tr -d '[:space:]' <"$real/PG_VERSION")
            if [ -x "/usr/lib/postgresql/$ver/bin/postgres" ]; then
                printf '%s\n' "/usr/lib/postgresql/$ver/bin"
                return 0
            fi
            chorus_log "cluster $1 is version $ver but /usr/lib/postgresql/$ver/bin is missing"
            return 1
        fi
    fi
    if [ -x /usr/lib/postgresql/15/bin/postgres ]; then
        printf '%s\n' /usr/lib/postgresql/15/bin
        return 0
    fi
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1)
    if [ -z "$dir" ] || [ ! -x "$dir/postgres" ]; then
        chorus_log "no Postgres server binaries under /usr/lib/postgresql (package postgresql)"
        return 1
    fi
    printf '%s\n' "$dir"
}

# chorus_pg_realdir DATADIR - prints DATADIR with symlinks resolved (the path handed to
# Postgres, which may not be able to traverse the symlink's own location).
chorus_pg_realdir() {
    readlink -f -- "$1"
}

# chorus_pg_prepare_datadir DATADIR - makes DATADIR an existing directory, mode 700,
# owned by the Postgres OS user, and prints its real path.
#
# Why the relocation: as root, the cluster belongs to `chorus`, and Postgres (running as
# chorus) must be able to reach its data directory. A clone under /root (mode 700), or a
# mktemp -d directory, cannot be traversed by chorus, and loosening the permissions of
# someone's home is not ours to do. In that case the cluster lives in
# /var/tmp/chorus-pg-<sha256 of the absolute DATADIR, 16 hex>/ (owned by chorus, 700;
# /var/tmp survives reboots, unlike /tmp on many systems) and DATADIR becomes a symlink
# to it, so the callers keep one path. When DATADIR already is such a symlink, its
# target is reused.
chorus_pg_prepare_datadir() {
    local datadir owner parent real alt hash reachable
    datadir=$(chorus_abspath "$1")
    owner=$(chorus_pg_os_user)
    chorus_pg_ensure_os_user || return 1
    if [ -L "$datadir" ]; then
        real=$(readlink -f -- "$datadir") || return 1
        if [ ! -d "$real" ]; then
            mkdir -p -- "$real" || return 1
            if chorus_is_root; then
                chown "$owner:" -- "$real" || return 1
            fi
        fi
    else
        parent=$(dirname -- "$datadir")
        mkdir -p -- "$parent" || return 1
        reachable=yes
        if chorus_is_root && ! runuser -u "$owner" -- test -x "$parent" 2>/dev/null; then
            reachable=no
        fi
        if [ -d "$datadir" ] && [ "$reachable" = no ]; then
            # An empty directory made in advance (e.g. by a test) is replaced by the link.
            if [ -n "$(ls -A -- "$datadir")" ]; then
                chorus_log "postgres: $datadir is not reachable by user $owner and not empty"
                return 1
            fi
            rmdir -- "$datadir" || return 1
        fi
        if [ -d "$datadir" ]; then
            real=$datadir
        elif [ "$reachable" = no ]; then
            hash=$(printf '%s' "$datadir" | sha256sum | cut -c1-16)
            alt=/var/tmp/chorus-pg-$hash
            if [ -L "$alt" ] || { [ -e "$alt" ] && [ "$(stat -c %U -- "$alt")" != "$owner" ]; }; then
                chorus_log "$alt exists and is not a directory owned by $owner: refusing to use it"
                return 1
            fi
            mkdir -p -- "$alt" || return 1
            chown "$owner:" -- "$alt" || return 1
            ln -s -- "$alt" "$datadir" || return 1
            chorus_log "postgres: $parent is not reachable by user $owner;" \
                "cluster placed in $alt (symlinked from $datadir)"
            real=$alt
        else
            mkdir -m 700 -- "$datadir" || return 1
            real=$datadir
        fi
    fi
    if [ "$(stat -c %U -- "$real")" != "$owner" ]; then
        if [ -z "$(ls -A -- "$real")" ] && chorus_is_root; then
            chown "$owner:" -- "$real" || return 1
        else
            chorus_log "postgres data directory $real belongs to $(stat -c %U -- "$real"), not $owner" \
                "(created by a run as another user?)"
            return 1
        fi
    fi
    chmod 700 -- "$real" || return 1
    printf '%s\n' "$real"
}

# chorus_pg_init DATADIR - creates a cluster in DATADIR unless one is there: superuser
# `chorus`, trust authentication (only ever reachable on 127.0.0.1), UTF8, locale
# C.UTF-8 (plain C when that locale is missing). fsync stays on: the local stack keeps
# real data. Prints the real data directory path.
chorus_pg_init() {
    local real bindir out locale=C
    real=$(chorus_pg_prepare_datadir "$1") || return 1
    if [ -f "$real/PG_VERSION" ]; then
        printf '%s\n' "$real"
        return 0
    fi
    bindir=$(chorus_pg_bindir) || return 1
    if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then
        locale=C.UTF-8
    fi
    chorus_log "postgres: initdb $real ($bindir, locale $locale)"
    out=$(chorus_as_pg "$bindir/initdb" -D "$real" -U "$CHORUS_PG_SUPERUSER" --auth=trust \
        --encoding=UTF8 --locale="$locale" 2>&1 </dev/null) || {
        printf '%s\n' "$out" >&2
        return 1
    }
    printf '%s\n' "$real"
}

# chorus_pg_pid DATADIR - prints the postmaster pid of the cluster in DATADIR and
# succeeds when it is running (postmaster.pid names a live postgres process whose
# command line carries this data directory, as pg_ctl starts it: -D <real path>).
chorus_pg_pid() {
    local real
    real=$(chorus_pg_realdir "$1" 2>/dev/null) || return 1
    chorus_pidfile_pid "$real/postmaster.pid" postgres "-D $real "
}

# chorus_pg_port DATADIR - prints the port the running cluster in DATADIR listens on
# (line 4 of postmaster.pid).
chorus_pg_port() {
    local real
    real=$(chorus_pg_realdir "$1" 2>/dev/null) || return 1
    sed -n 4p "$real/postmaster.pid" 2>/dev/null
}

# chorus_pg_start DATADIR PORT LOGFILE - initialises DATADIR if needed and starts the
# cluster on 127.0.0.1:PORT (TCP only: unix_socket_directories='' avoids socket
# directory permission problems), server output appended to LOGFILE, and waits until
# it accepts connections. A no-op when the cluster already runs (even on another port:
# that is reported). Connect with: psql -h 127.0.0.1 -p PORT -U chorus postgres.
# CHORUS_PG_OPTIONS adds server options ("-c shared_buffers=1GB ..."; the benchmarks).
chorus_pg_start() {
    local datadir=$1 port=$2 logfile real bindir pid running_port
    logfile=$(chorus_abspath "$3")
    real=$(chorus_pg_init "$datadir") || return 1
    if pid=$(chorus_pg_pid "$real"); then
        running_port=$(chorus_pg_port "$real")
        if [ "$running_port" != "$port" ]; then
            chorus_log "postgres: already running (pid $pid) on port $running_port, not $port"
        else
            chorus_log "postgres: already running (pid $pid, port $port)"
        fi
        return 0
    fi
    if chorus_port_open "$port"; then
        chorus_log "postgres: port $port is taken by another process (ss -ltnp | grep :$port)"
        return 1
    fi
    bindir=$(chorus_pg_bindir "$real") || return 1
    mkdir -p -- "$(dirname -- "$logfile")" || return 1
    # pg_ctl -l would make the postgres user open LOGFILE itself; instead the server
    # inherits a descriptor opened here, so LOGFILE may live where that user cannot go.
    if ! chorus_as_pg "$bindir/pg_ctl" start -w -t 60 -D "$real" \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' ${CHORUS_PG_OPTIONS:-}" \
        >>"$logfile" 2>&1 </dev/null; then
        chorus_log "postgres: failed to start; last lines of $logfile:"
        tail -n 20 -- "$logfile" >&2 || true
        return 1
    fi
    chorus_log "postgres: started (pid $(chorus_pg_pid "$real" || echo '?'), port $port, data $real)"
}

# chorus_pg_stop DATADIR - stops the cluster in DATADIR (pg_ctl stop -m fast, as the
# user that runs it; -m immediate if fast has not finished after 60 s). A no-op when
# it is not running or DATADIR holds no cluster.
chorus_pg_stop() {
    local real bindir pid
    real=$(chorus_pg_realdir "$1" 2>/dev/null) || return 0
    [ -f "$real/PG_VERSION" ] || return 0
    pid=$(chorus_pg_pid "$real") || {
        chorus_log "postgres: not running ($real)"
        return 0
    }
    bindir=$(chorus_pg_bindir "$real") || return 1
    if chorus_as_pg "$bindir/pg_ctl" stop -w -t 60 -m fast -D "$real" >/dev/null 2>&1 </dev/null; then
        chorus_log "postgres: stopped (pid $pid)"
        return 0
    fi
    chorus_log "postgres: fast shutdown did not finish, using immediate"
    chorus_as_pg "$bindir/pg_ctl" stop -w -t 30 -m immediate -D "$real" >/dev/null 2>&1 </dev/null
}

# chorus_pg_destroy DATADIR - stops the cluster in DATADIR and deletes it: DATADIR
# itself and, when DATADIR is a symlink made by chorus_pg_prepare_datadir, the
# /var/tmp/chorus-pg-* directory it points to (nothing else is ever followed). For test
# harnesses that start throw-away clusters in temporary directories.
chorus_pg_destroy() {
    local datadir target
    datadir=$(chorus_abspath "$1")
    chorus_pg_stop "$datadir" || return 1
    if [ -L "$datadir" ]; then
        target=$(readlink -f -- "$datadir" || true)
        case $target in
            /var/tmp/chorus-pg-*) rm -rf -- "$target" || return 1 ;;
            *) chorus_log "postgres: $datadir points to $target: only the link is removed" ;;
        esac
        rm -f -- "$datadir"
    else
        rm -rf -- "$datadir"
    fi
}

# chorus_pg_psql PORT DB ARGS... - runs psql as superuser chorus against
# 127.0.0.1:PORT/DB, quiet, stopping at the first error (ARGS are psql's: -c, -f...).
chorus_pg_psql() {
    local port=$1 db=$2 bindir
    shift 2
    bindir=$(chorus_pg_bindir) || return 1
    PGCONNECT_TIMEOUT=5 "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U "$CHORUS_PG_SUPERUSER" -d "$db" "$@"
}

# chorus_pg_ensure_db PORT DBNAME - creates database DBNAME (owner chorus) on the
# cluster at 127.0.0.1:PORT unless it exists. DBNAME must be a plain identifier.
chorus_pg_ensure_db() {
    local port=$1 db=$2 have
    case $db in '' | *[!a-zA-Z0-9_]*)
        chorus_log "bad database name: $db"
        return 1
        ;;
    esac
    have=$(chorus_pg_psql "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
        return 1
    [ "$have" = 1 ] && return 0
    chorus_log "postgres: creating database $db"
    chorus_pg_psql "$port" postgres -c "CREATE DATABASE \"$db\""
}

# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------

# chorus_redis_pid PIDFILE - prints the pid in PIDFILE and succeeds when that process is
# a running redis-server (its title names redis-server).
chorus_redis_pid() {
    chorus_pidfile_pid "$1" redis-server
}

# chorus_redis_port PIDFILE - prints the port of the running redis-server of PIDFILE,
# read from its process title ("redis-server 127.0.0.1:PORT").
chorus_redis_port() {
    local pid title
    pid=$(chorus_redis_pid "$1") || return 1
    title=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    title=${title##*:}
    title=${title%% *}
    case $title in '' | *[!0-9]*) return 1 ;; esac
    printf '%s\n' "$title"
}

# chorus_redis_start DIR PORT PIDFILE [APPENDONLY [REDIS-ARG...]] - starts a daemonised
# redis-server on 127.0.0.1:PORT (protected mode on) with working directory DIR (AOF and
# RDB files), pid file PIDFILE and log file DIR/redis.log, and waits until it answers
# PING. APPENDONLY is yes (default: durable, for the local stack) or no (throw-away
# test servers: then RDB snapshots are off as well, so nothing is written to DIR).
# Further REDIS-ARGs are passed as they are and, coming last, override the above
# (e.g. --logfile /elsewhere.log --maxmemory 512mb). A no-op when PIDFILE names a
# running redis-server.
chorus_redis_start() {
    local dir port=$2 pidfile appendonly=${4:-yes} pid i
    local -a args
    dir=$(chorus_abspath "$1")
    pidfile=$(chorus_abspath "$3")
    shift 3
    [ "$#" -gt 0 ] && shift
    if pid=$(chorus_redis_pid "$pidfile"); then
        chorus_log "redis: already running (pid $pid)"
        return 0
    fi
    case $appendonly in yes | no) ;; *)
        chorus_log "redis: APPENDONLY must be yes or no, not $appendonly"
        return 1
        ;;
    esac
    if chorus_port_open "$port"; then
        chorus_log "redis: port $port is taken by another process (ss -ltnp | grep :$port)"
        return 1
    fi
    mkdir -p -- "$dir" "$(dirname -- "$pidfile")" || return 1
    chmod 700 -- "$dir" || return 1
    rm -f -- "$pidfile"
    args=(--bind 127.0.0.1 --port "$port" --protected-mode yes
        --dir "$dir" --daemonize yes --pidfile "$pidfile" --logfile "$dir/redis.log"
        --appendonly "$appendonly" --databases 64) # tests take a db each (tests/lib/api.c)
    if [ "$appendonly" = no ]; then
        args+=(--save '')
    fi
    args+=("$@")
    if ! (cd "$dir" && redis-server "${args[@]}" </dev/null >/dev/null 2>&1); then
        chorus_log "redis: redis-server failed to start (see its log file)"
        return 1
    fi
    # --daemonize returns before the server is ready: wait for the pid file and PING.
    for ((i = 0; i < 100; i++)); do
        if pid=$(chorus_redis_pid "$pidfile") &&
            [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
            chorus_log "redis: started (pid $pid, port $port, dir $dir)"
            return 0
        fi
        sleep 0.1
    done
    chorus_log "redis: did not answer PING on port $port within 10 s (see its log file)"
    return 1
}

# chorus_redis_stop PIDFILE - stops the redis-server whose pid is in PIDFILE: SIGTERM
# (Redis then writes its AOF/RDB and exits), up to 20 s, then SIGKILL. Removes PIDFILE.
# Only that pid is signalled, and only when it is a redis-server; a stale PIDFILE is
# just removed. A no-op when nothing runs.
chorus_redis_stop() {
    local pidfile=$1 pid
    if pid=$(chorus_redis_pid "$pidfile"); then
        chorus_stop_pid "$pid" 20 redis
    else
        chorus_log "redis: not running"
    fi
    rm -f -- "$pidfile"
}

# ---------------------------------------------------------------------------------------
# the local stack (deploy/local/up, down, status)
# ---------------------------------------------------------------------------------------

# chorus_local_vars ROOT - sets the LOCAL_* variables of the local stack of the checkout
# at ROOT. Everything lives in ROOT/.chorus (git-ignored): pg/ (the cluster, or a
# symlink to it, see chorus_pg_prepare_datadir), redis/, log/, run/ (pid files, the
# state file, the lock) and secret (the JWT key).
#
# Ports: the environment (CHORUS_PG_PORT, CHORUS_REDIS_PORT, CHORUS_GATEWAY_PORT,
# CHORUS_WSS_PORT) wins; else what `up` recorded in run/state (present while the stack
# is up, so `status` and `down` find a stack started with other settings); else the
# defaults 55432, 56379, 8080, 9001.
#
# The binary is the one `up` builds (chorus_local_default_bin); CHORUS_LOCAL_BIN points
# the stack at another one (e.g. an ASan build; up's build step still runs unless
# CHORUS_SKIP_BUILD=1). It is recorded in run/state too: the running process is
# recognised by it.
chorus_local_vars() {
    local key val
    local rec_pg='' rec_redis='' rec_gateway='' rec_wss='' rec_bin=''
    LOCAL_ROOT=$1
    LOCAL_DATA=$LOCAL_ROOT/.chorus
    LOCAL_PG_DIR=$LOCAL_DATA/pg
    LOCAL_REDIS_DIR=$LOCAL_DATA/redis
    LOCAL_LOG_DIR=$LOCAL_DATA/log
    LOCAL_RUN_DIR=$LOCAL_DATA/run
    LOCAL_SECRET=$LOCAL_DATA/secret
    LOCAL_STATE_FILE=$LOCAL_RUN_DIR/state
    LOCAL_BUILD_DIR=$LOCAL_ROOT/build
    LOCAL_CHORUS_PIDFILE=$LOCAL_RUN_DIR/chorus.pid
    LOCAL_REDIS_PIDFILE=$LOCAL_RUN_DIR/redis.pid
    LOCAL_DB=chorus
    if [ -r "$LOCAL_STATE_FILE" ]; then
        while IFS='=' read -r key val; do
            if [ "$key" = bin ]; then
                rec_bin=$val
                continue
            fi
            case $val in '' | *[!0-9]*) continue ;; esac
            case $key in
                pg) rec_pg=$val ;;
                redis) rec_redis=$val ;;
                gateway) rec_gateway=$val ;;
                wss) rec_wss=$val ;;
            esac
        done <"$LOCAL_STATE_FILE"
    fi
    LOCAL_BIN=${CHORUS_LOCAL_BIN:-${rec_bin:-$(chorus_local_default_bin)}}
    LOCAL_REC_GATEWAY_PORT=$rec_gateway
    LOCAL_REC_WSS_PORT=$rec_wss
    LOCAL_PG_PORT=${CHORUS_PG_PORT:-${rec_pg:-55432}}
    LOCAL_REDIS_PORT=${CHORUS_REDIS_PORT:-${rec_redis:-56379}}
    LOCAL_GATEWAY_PORT=${CHORUS_GATEWAY_PORT:-${rec_gateway:-8080}}
    LOCAL_WSS_PORT=${CHORUS_WSS_PORT:-${rec_wss:-9001}}
    LOCAL_HOST=${CHORUS_PUBLIC_HOST:-127.0.0.1}
    chorus_local_urls
    export LOCAL_REC_GATEWAY_PORT LOCAL_REC_WSS_PORT LOCAL_ROOT LOCAL_DATA LOCAL_PG_DIR LOCAL_REDIS_DIR LOCAL_LOG_DIR LOCAL_RUN_DIR \
        LOCAL_SECRET LOCAL_STATE_FILE LOCAL_BUILD_DIR LOCAL_BIN LOCAL_CHORUS_PIDFILE \
        LOCAL_REDIS_PIDFILE LOCAL_DB LOCAL_PG_PORT LOCAL_REDIS_PORT LOCAL_GATEWAY_PORT \
        LOCAL_WSS_PORT LOCAL_HOST LOCAL_DATABASE_URL LOCAL_REDIS_URL
}

# chorus_local_default_bin - prints the path of the chorus binary in LOCAL_BUILD_DIR:
# build/chorus or build/cmd/chorus (where CMake puts it unless told otherwise),
# whichever exists (the newer when both do); build/chorus when neither does yet.
chorus_local_default_bin() {
    local top=$LOCAL_BUILD_DIR/chorus sub=$LOCAL_BUILD_DIR/cmd/chorus
    if [ -f "$sub" ] && [ -x "$sub" ] && { [ ! -f "$top" ] || [ "$sub" -nt "$top" ]; }; then
        printf '%s\n' "$sub"
    else
        printf '%s\n' "$top"
    fi
}

# chorus_local_lock - takes the stack's lock (RUN_DIR/lock) on file descriptor 9, so two
# of up/down cannot interleave; fails at once when another holds it. The lock is
# released when the calling script exits. Daemons must be started with `9>&-` so they
# do not inherit (and keep) it.
chorus_local_lock() {
    mkdir -p -- "$LOCAL_RUN_DIR" || return 1
    exec 9>"$LOCAL_RUN_DIR/lock" || return 1
    if ! flock -n 9; then
        chorus_log "another deploy/local/up or down is running (lock $LOCAL_RUN_DIR/lock)"
        return 1
    fi
}

# chorus_local_chorus_pid - prints the pid of the running Chorus process of the stack
# (pid file + the process' command line names our binary and `run`), or fails.
chorus_local_chorus_pid() {
    chorus_pidfile_pid "$LOCAL_CHORUS_PIDFILE" "$LOCAL_BIN" " run "
}

# chorus_local_urls - (re)computes LOCAL_DATABASE_URL and LOCAL_REDIS_URL from the ports.
chorus_local_urls() {
    LOCAL_DATABASE_URL=postgresql://$CHORUS_PG_SUPERUSER@127.0.0.1:$LOCAL_PG_PORT/$LOCAL_DB
    LOCAL_REDIS_URL=redis://127.0.0.1:$LOCAL_REDIS_PORT/0
}

# chorus_local_adopt_ports - for each part of the stack that is already running, replaces
# the LOCAL_*_PORT asked for by the port it really uses (Postgres: postmaster.pid; Redis:
# its process title; Chorus: run/state), saying so when they differ. A running part is
# never restarted just to move it: `down` first.
chorus_local_adopt_ports() {
    local p
    if chorus_pg_pid "$LOCAL_PG_DIR" >/dev/null && p=$(chorus_pg_port "$LOCAL_PG_DIR") &&
        [ -n "$p" ] && [ "$p" != "$LOCAL_PG_PORT" ]; then
        chorus_log "postgres: already running on port $p, not $LOCAL_PG_PORT: keeping $p (down first to change it)"
        LOCAL_PG_PORT=$p
    fi
    if p=$(chorus_redis_port "$LOCAL_REDIS_PIDFILE") && [ "$p" != "$LOCAL_REDIS_PORT" ]; then
        chorus_log "redis: already running on port $p, not $LOCAL_REDIS_PORT: keeping $p (down first to change it)"
        LOCAL_REDIS_PORT=$p
    fi
    if chorus_local_chorus_pid >/dev/null; then
        if [ -n "$LOCAL_REC_GATEWAY_PORT" ] && [ "$LOCAL_REC_GATEWAY_PORT" != "$LOCAL_GATEWAY_PORT" ]; then
            chorus_log "chorus: already running with gateway port $LOCAL_REC_GATEWAY_PORT: keeping it"
            LOCAL_GATEWAY_PORT=$LOCAL_REC_GATEWAY_PORT
        fi
        if [ -n "$LOCAL_REC_WSS_PORT" ] && [ "$LOCAL_REC_WSS_PORT" != "$LOCAL_WSS_PORT" ]; then
            chorus_log "chorus: already running with wss port $LOCAL_REC_WSS_PORT: keeping it"
            LOCAL_WSS_PORT=$LOCAL_REC_WSS_PORT
        fi
    fi
    chorus_local_urls
}

# ---------------------------------------------------------------------------------------
# throw-away servers (tests/run, bench/)
# ---------------------------------------------------------------------------------------

# chorus_scratch_start DIR DBNAME - starts a Postgres and a Redis that live in DIR (a
# fresh folder, e.g. from mktemp -d) on free loopback ports far from the local stack's
# (from 45432 and 46379), creates database DBNAME, and exports DATABASE_URL and
# REDIS_URL. Pair it with chorus_scratch_stop DIR (from a trap).
chorus_scratch_start() {
    local dir=$1 db=$2 pg_port redis_port
    chmod 711 -- "$dir" || return 1 # as root, the postgres user `chorus` must reach pg/
    pg_port=$(chorus_free_port 45432) || return 1
    chorus_pg_start "$dir/pg" "$pg_port" "$dir/postgres.log" ||
        { chorus_log "postgres did not start (log: $dir/postgres.log)"; return 1; }
    chorus_pg_ensure_db "$pg_port" "$db" || return 1
    mkdir -p -- "$dir/redis" || return 1
    redis_port=$(chorus_free_port 46379) || return 1
    chorus_redis_start "$dir/redis" "$redis_port" "$dir/redis.pid" no --logfile "$dir/redis.log" ||
        { chorus_log "redis did not start (log: $dir/redis.log)"; return 1; }
    export DATABASE_URL="postgresql://chorus@127.0.0.1:$pg_port/$db"
    export REDIS_URL="redis://127.0.0.1:$redis_port/0"
    export CHORUS_SCRATCH_PG_PORT=$pg_port
}

# chorus_scratch_stop DIR - stops what chorus_scratch_start DIR started (by pid) and
# deletes the Postgres cluster; the rest of DIR (logs) is the caller's.
chorus_scratch_stop() {
    local dir=$1
    chorus_redis_stop "$dir/redis.pid" || true
    chorus_pg_destroy "$dir/pg" || true
}
