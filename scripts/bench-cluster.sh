# Shared by scripts/bench-shards, scripts/bench-deflate and scripts/bench-pusher (sourced):
# free ports, the processes a script started and their clean-up on exit, readiness waits, and
# a cluster of SHARDS redis-servers (independent, or one Redis Cluster of SHARDS masters),
# broker-api and two gateways. The sourcing script sets
# `bin`, `out`, `api_key` and `namespaces`, and defines `log`.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap cleanup EXIT INT TERM
wait_ready() {
    for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
    log "not ready: $1"; return 1
}

# Starts SHARDS redis-servers, broker-api and two gateways on them: the bus sharded over the
# servers when there are several, or, with `cluster` as the second argument, the servers made
# one Redis Cluster of SHARDS masters (no replicas, so it runs as many Redis processes as the
# sharded setup). Sets $api, $gw_args and $server_args for chorus-bench.
start_cluster() { # SHARDS [cluster]
    cleanup
    local shards=$1 mode=${2:-} urls="" api_port nodes=()
    server_args=""
    for i in $(seq 1 "$shards"); do
        local port cluster_flags=()
        port=$(free_port)
        if [ "$mode" = cluster ]; then
            # The cluster bus listens on port + 10000.
            while [ "$port" -gt 55535 ]; do port=$(free_port); done
            cluster_flags=(--cluster-enabled yes --cluster-config-file "$out/logs/nodes-$port.conf")
        fi
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            "${cluster_flags[@]}" --logfile "$out/logs/redis-$i.log" &
        pids+=($!)
        server_args="$server_args --server redis-$i=$!"
        for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
        urls="${urls:+$urls,}redis://127.0.0.1:$port"
        nodes+=("127.0.0.1:$port")
    done
    if [ "$mode" = cluster ]; then
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
        local first=${nodes[0]#*:}
        for _ in $(seq 1 200); do
            redis-cli -p "$first" cluster info | grep -q cluster_state:ok && break
            sleep 0.05
        done
        urls="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
    fi
    api_port=$(free_port)
    RUST_LOG=warn "$bin/chorus-broker-api" --api-listen "127.0.0.1:$api_port" --api-key "$api_key" \
        --redis-url "$urls" --namespaces "$namespaces" >"$out/logs/broker-api.log" 2>&1 &
    pids+=($!)
    api="http://127.0.0.1:$api_port"
    server_args="$server_args --server broker-api=$!"
    gw_args=""
    for i in 1 2; do
        local port
        port=$(free_port)
        RUST_LOG=warn "$bin/chorus-gateway" --gateway-listen "127.0.0.1:$port" --metrics-listen off \
            --node-id "bench-gw-$i" --redis-url "$urls" --namespaces "$namespaces" \
            >"$out/logs/gateway-$i.log" 2>&1 &
        pids+=($!)
        server_args="$server_args --server gateway-$i=$!"
        gw_args="$gw_args --gateway 127.0.0.1:$port"
        wait_ready "http://127.0.0.1:$port/readyz"
    done
    wait_ready "$api/readyz"
}
