#!/usr/bin/env bash
# The classroom demo: one tmux session with the server, the live inspector, the
# live trace and three interactive clients, each in its own labelled pane, ready
# to type into.  The server runs with --trace (the trace pane), --lesson-hooks
# (so that ./dev lesson can run against it) and --no-flood-control (the
# backpressure lesson floods on purpose, to show the output limit).
#
#   scripts/demo.sh start [--port N] [--ipc sysv|posix] [--detach]
#                                                 open it (and attach, unless --detach
#                                                 or stdin is not a terminal); --ipc posix
#                                                 runs the server on POSIX IPC (/dev/shm)
#   scripts/demo.sh stop  [--port N]              tear it down: the server is stopped
#                                                 with SIGTERM (it removes its IPC objects),
#                                                 the session is killed, and the script
#                                                 checks that no process and no IPC object
#                                                 of the demo is left
#
# ./dev demo and ./dev demo-stop call this (./dev creates .venv on first use).
#
# Settings (environment):
#   SHMCHAT_DEMO_PORT         port of the demo server (default 5000; --port wins)
#   SHMCHAT_DEMO_SESSION      tmux session name (default shmchat-demo)
#   SHMCHAT_DEMO_TMUX_SOCKET  a separate tmux server (tmux -L NAME); default: your usual one
#   SHMCHAT_PYTHON            interpreter (default .venv/bin/python if present, else python3)
#
# The server has room for 8 clients: the three panes, and the clients a lesson
# (./dev lesson) connects next to them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/demo.sh"
SESSION="${SHMCHAT_DEMO_SESSION:-shmchat-demo}"
PORT="${SHMCHAT_DEMO_PORT:-5000}"
# Room for the three demo clients and the clients a lesson connects (up to three).
DEMO_CLIENTS=8

pick_python() {
    if [ -n "${SHMCHAT_PYTHON:-}" ]; then echo "$SHMCHAT_PYTHON"
    elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
    else echo python3
    fi
}
PY="$(pick_python)"

tmux_() {
    if [ -n "${SHMCHAT_DEMO_TMUX_SOCKET:-}" ]; then tmux -L "$SHMCHAT_DEMO_TMUX_SOCKET" "$@"
    else tmux "$@"
    fi
}

state_dir() {  # pid files and downloads of one demo
    echo "${XDG_RUNTIME_DIR:-/tmp}/shmchat-demo-$(id -u)-$1"
}

say() { printf '%s\n' "$*"; }
fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# Is something listening on TCP port $1 (127.0.0.1 or any address)?  Read
# from /proc, so that checking does not connect (a connection is a client).
listening() {
    local hex
    hex="$(printf '%04X' "$1")"
    awk -v port=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == port { found = 1 }
        END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_listening() {  # $1 port, $2 seconds
    local tries=$(( $2 * 10 ))
    while ! listening "$1"; do
        tries=$(( tries - 1 ))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# The pid of the server using the port's IPC objects, from the segment header.
server_pid() {
    (cd "$ROOT" && "$PY" -c '
import sys
from shm.discovery import live_server_pid
pid = live_server_pid(int(sys.argv[1]))
print(pid or "")' "$1" 2>/dev/null)
}

shmchat_objects() {  # how many IPC objects of port $1 exist: System V keys (the trace table
    # is object 5), and POSIX names in /dev/shm
    local key=$(( (0x5C4 << 20) | ($1 << 4) )) sysv posix
    sysv="$(awk -v lo="$key" -v hi="$(( key + 5 ))" 'NR > 1 && $1 >= lo && $1 <= hi { n++ } END { print n + 0 }' \
        /proc/sysvipc/shm /proc/sysvipc/sem)"
    posix="$(find /dev/shm -maxdepth 1 \( -name "shmchat-$1-*" -o -name "sem.shmchat-$1-*" \) 2>/dev/null | wc -l)"
    echo $(( sysv + posix ))
}

# -- what runs in each pane ---------------------------------------------------------

pane_server() {  # port state ipc
    local port="$1" state="$2" ipc="$3" status
    cd "$ROOT" || exit 1
    while true; do
        # sh writes its own pid, then becomes the server: the pid file names the server.
        sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$state/server.pid" \
            "$PY" -m server --port "$port" --max-clients "$DEMO_CLIENTS" --trace --lesson-hooks --no-flood-control \
            --log-level INFO --ipc "$ipc"
        status=$?
        rm -f "$state/server.pid"
        printf '\n[the server exited with status %s; press Enter to start it again]\n' "$status"
        read -r || exit 0
    done
}

pane_inspector() {  # port
    cd "$ROOT" || exit 1
    while true; do
        "$PY" -m shm inspect --port "$1" --watch 1
        printf '\n[the inspector stopped; press Enter to start it again]\n'
        read -r || exit 0
    done
}

has_trace_table() {  # does port $1 have a trace segment (object 5 in /proc/sysvipc/shm, or in /dev/shm)?
    local key=$(( (0x5C4 << 20) | ($1 << 4) | 5 ))
    [ -e "/dev/shm/shmchat-$1-trace" ] ||
        awk -v key="$key" 'NR > 1 && $1 == key { found = 1 } END { exit !found }' /proc/sysvipc/shm
}

pane_trace() {  # port
    local port="$1" tries
    cd "$ROOT" || exit 1
    while true; do
        # The server listens first and creates its tables just after: wait for the trace table.
        tries=150
        while ! has_trace_table "$port" && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$(( tries - 1 )); done
        "$PY" -m shm trace --port "$port" --follow
        printf '\n[the trace stopped; press Enter to start it again]\n'
        read -r || exit 0
    done
}

pane_client() {  # port name state
    local port="$1" name="$2" state="$3" status
    cd "$ROOT" || exit 1
    wait_listening "$port" 20 || say "[no server is listening on port $port yet]"
    while true; do
        "$PY" -m client --port "$port" --download-dir "$state/downloads-$name"
        status=$?
        printf '\n[client %s exited with status %s; press Enter to connect again]\n' "$name" "$status"
        read -r || exit 0
    done
}

# -- start and stop -----------------------------------------------------------------

check_ready() {
    command -v tmux >/dev/null 2>&1 || fail "tmux is not installed (apt-get install tmux), or use ./dev demo"
    (cd "$ROOT" && "$PY" -c 'import sysv_ipc, posix_ipc, prompt_toolkit' 2>/dev/null) ||
        fail "$PY cannot import sysv_ipc, posix_ipc and prompt_toolkit; run ./dev demo, which sets up .venv"
}

start() {
    local detach=0 ipc=sysv
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) PORT="$2"; shift 2 ;;
            --port=*) PORT="${1#--port=}"; shift ;;
            --ipc) ipc="$2"; shift 2 ;;
            --ipc=*) ipc="${1#--ipc=}"; shift ;;
            --detach) detach=1; shift ;;
            *) fail "unknown option $1 (use --port N, --ipc sysv|posix, --detach)" ;;
        esac
    done
    [ "$ipc" = sysv ] || [ "$ipc" = posix ] || fail "bad --ipc: $ipc (sysv or posix)"
    [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -gt 0 ] && [ "$PORT" -lt 65536 ] || fail "bad port: $PORT"
    check_ready
    if tmux_ has-session -t "=$SESSION" 2>/dev/null; then
        fail "the demo is already running (tmux attach -t $SESSION), or stop it: ./dev demo-stop"
    fi
    listening "$PORT" && fail "port $PORT is already in use; pick another: ./dev demo --port 5001"
    local state
    state="$(state_dir "$PORT")"
    rm -rf "$state"
    mkdir -p "$state" || fail "cannot create $state"
    local cols=200 rows=50
    if [ -t 1 ]; then cols="$(tput cols 2>/dev/null || echo 200)"; rows="$(tput lines 2>/dev/null || echo 50)"; fi
    local q_self q_py q_state
    q_self="$(printf '%q' "$SELF")"; q_py="$(printf '%q' "$PY")"; q_state="$(printf '%q' "$state")"
    local run="SHMCHAT_PYTHON=$q_py bash $q_self"

    # Left column: the inspector above the trace; right column: three clients above
    # the server's log.
    local server inspector trace a b c
    server="$(tmux_ new-session -d -s "$SESSION" -n shmchat -x "$cols" -y "$rows" -P -F '#{pane_id}' \
        "$run _server $PORT $q_state $ipc")" || fail "tmux could not start a session"
    wait_listening "$PORT" 15 || say "warning: the server is not listening on $PORT yet (see its pane)"
    inspector="$(tmux_ split-window -h -b -l 60% -t "$server" -P -F '#{pane_id}' "$run _inspector $PORT")"
    a="$(tmux_ split-window -v -b -l 84% -t "$server" -P -F '#{pane_id}' "$run _client $PORT A $q_state")"
    b="$(tmux_ split-window -v -l 67% -t "$a" -P -F '#{pane_id}' "$run _client $PORT B $q_state")"
    c="$(tmux_ split-window -v -l 50% -t "$b" -P -F '#{pane_id}' "$run _client $PORT C $q_state")"
    trace="$(tmux_ split-window -v -l 40% -t "$inspector" -P -F '#{pane_id}' "$run _trace $PORT")"

    tmux_ select-pane -t "$server" -T "server  (./dev server --port $PORT --trace --lesson-hooks --no-flood-control --max-clients $DEMO_CLIENTS --ipc $ipc)"
    tmux_ select-pane -t "$trace" -T "trace  (./dev shm trace --port $PORT --follow)"
    tmux_ select-pane -t "$inspector" -T "inspector  (./dev shm inspect --port $PORT --watch)"
    tmux_ select-pane -t "$a" -T "client A"
    tmux_ select-pane -t "$b" -T "client B"
    tmux_ select-pane -t "$c" -T "client C"
    tmux_ set-option -w -t "$SESSION" pane-border-status top >/dev/null
    tmux_ set-option -w -t "$SESSION" pane-border-format ' #{pane_title} ' >/dev/null
    tmux_ set-option -t "$SESSION" mouse on >/dev/null  # click a pane to type in it
    tmux_ set-option -t "$SESSION" status-right " port $PORT · stop: ./dev demo-stop " >/dev/null
    tmux_ select-pane -t "$a"

    say "shmchat demo running on 127.0.0.1:$PORT in tmux session '$SESSION'."
    say "  panes: inspector, trace and server on the left, clients A, B, C on the right (click one to type)"
    say "  guided lessons against this server: ./dev lesson"
    say "  stop everything: ./dev demo-stop$( [ "$PORT" = 5000 ] || printf ' --port %s' "$PORT")"
    if [ "$detach" = 1 ] || [ ! -t 0 ] || [ ! -t 1 ]; then
        local how="tmux attach -t $SESSION"
        [ -n "${SHMCHAT_DEMO_TMUX_SOCKET:-}" ] && how="tmux -L $SHMCHAT_DEMO_TMUX_SOCKET attach -t $SESSION"
        say "  look at it: $how   (detach again with Ctrl-b d)"
        return 0
    fi
    if [ -n "${TMUX:-}" ] && [ -z "${SHMCHAT_DEMO_TMUX_SOCKET:-}" ]; then
        tmux_ switch-client -t "$SESSION"
    else
        TMUX='' tmux_ attach-session -t "$SESSION"  # (a separate tmux server inside tmux: nest)
    fi
}

stop() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) PORT="$2"; shift 2 ;;
            --port=*) PORT="${1#--port=}"; shift ;;
            *) fail "unknown option $1 (use --port N)" ;;
        esac
    done
    local state pid pane_pids=() left=0
    state="$(state_dir "$PORT")"

    # 1. The server, politely: SIGTERM makes it say goodbye to every client,
    #    reap its workers and remove its segments and semaphores.
    pid="$(cat "$state/server.pid" 2>/dev/null)"
    alive "$pid" || pid="$(server_pid "$PORT")"
    if alive "$pid"; then
        say "stopping the server (pid $pid) with SIGTERM..."
        kill -TERM "$pid"
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            say "the server did not stop in 10 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi

    # 2. The tmux session, with every pane.
    if tmux_ has-session -t "=$SESSION" 2>/dev/null; then
        local socket_path
        socket_path="$(tmux_ display-message -p '#{socket_path}' 2>/dev/null)"
        mapfile -t pane_pids < <(tmux_ list-panes -s -t "=$SESSION" -F '#{pane_pid}' 2>/dev/null)
        tmux_ kill-session -t "=$SESSION"
        say "closed tmux session '$SESSION'"
        # A tmux server of our own (SHMCHAT_DEMO_TMUX_SOCKET) ends with its last
        # session but leaves its socket file: remove it once nothing answers there.
        if [ -n "${SHMCHAT_DEMO_TMUX_SOCKET:-}" ] && [ -S "$socket_path" ]; then
            for _ in $(seq 20); do tmux_ list-sessions >/dev/null 2>&1 || break; sleep 0.05; done
            tmux_ list-sessions >/dev/null 2>&1 || rm -f "$socket_path"
        fi
    fi
    # Whatever a pane ran gets SIGHUP from tmux; make sure, by pid.
    for pid in "${pane_pids[@]}"; do
        for child in $(pgrep -P "$pid" 2>/dev/null) "$pid"; do
            alive "$child" && kill -TERM "$child" 2>/dev/null
        done
    done
    for _ in $(seq 30); do
        left=0
        for pid in "${pane_pids[@]}"; do alive "$pid" && left=$(( left + 1 )); done
        [ "$left" = 0 ] && break
        sleep 0.1
    done

    # 3. IPC objects: none should be left; a server killed with SIGKILL leaves
    #    its objects, which "./dev shm cleanup" removes.
    if [ "$(shmchat_objects "$PORT")" != 0 ]; then
        (cd "$ROOT" && "$PY" -m shm cleanup --port "$PORT")
    fi
    rm -rf "$state"

    local objects
    objects="$(shmchat_objects "$PORT")"
    if [ "$objects" = 0 ] && [ "$left" = 0 ] && ! listening "$PORT"; then
        say "demo stopped: no demo process left, no IPC object of port $PORT left (ipcs -m, ipcs -s, /dev/shm)"
        return 0
    fi
    say "demo stopped, but: $left pane process(es) still alive, $objects IPC object(s) of port $PORT left"
    return 1
}

cmd="${1:-}"; shift || true
case "$cmd" in
    start) start "$@" ;;
    stop) stop "$@" ;;
    _server) PY="${SHMCHAT_PYTHON:-$PY}"; pane_server "$@" ;;
    _inspector) PY="${SHMCHAT_PYTHON:-$PY}"; pane_inspector "$@" ;;
    _trace) PY="${SHMCHAT_PYTHON:-$PY}"; pane_trace "$@" ;;
    _client) PY="${SHMCHAT_PYTHON:-$PY}"; pane_client "$@" ;;
    *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
esac
