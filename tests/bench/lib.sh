# Helpers shared by the bench parts. Source it.

row() { printf 'ROW\t%s\t%s\t%s\t%s\t%s\n' "$@"; }

# start_agent DIR [extra yaml]: starts the static agent with its own cache
# dir and a free port; sets AGENT_PID, AGENT_URL, AGENT_TOKEN.
start_agent() {
    local dir=$1 extra=${2:-}
    mkdir -p "$dir"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    AGENT_TOKEN=bench-token-0123456789abcdef-0123456789
    cat >"$dir/agent.yaml" <<YAML
listen: 127.0.0.1:$port
cache_dir: $dir/cache
api_token: $AGENT_TOKEN
log_level: warn
$extra
YAML
    "$VENDETTA_BIN" agent start --config "$dir/agent.yaml" 2>"$dir/agent.log" &
    AGENT_PID=$!
    AGENT_URL=http://127.0.0.1:$port
    for _ in $(seq 1 200); do
        curl -fs "$AGENT_URL/health" -o /dev/null 2>/dev/null && return 0
        curl -s "$AGENT_URL/health" -o /dev/null 2>/dev/null && return 0
        sleep 0.05
    done
    echo "agent did not start; log:" >&2
    cat "$dir/agent.log" >&2
    return 1
}

stop_agent() {
    [ -n "${AGENT_PID:-}" ] || return 0
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# ratio A B: A/B with two decimals.
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
