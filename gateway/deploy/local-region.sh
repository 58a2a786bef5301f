#!/usr/bin/env bash
# A real multi-process region on one machine: one regional broker + coordinator (`prsm-edge region`), and
# N groups, each with its own Mosquitto (the rendered bridge included), coordinator, agent and gateway.
# Every process is a separate `prsm-edge` with its own state folder. Prints the region's view, then stops
# everything it started. Usage: gateway/deploy/local-region.sh [GROUPS=3] [SECONDS=40]
set -euo pipefail
GROUPS_N=${1:-3}
SECONDS_RUN=${2:-40}
PRSM=${PRSM:-prsm-edge}
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
DIR=$(mktemp -d /tmp/prsm-region.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RPORT=$(port)
PRSM_EDGE_HOME=$DIR/region $PRSM region --site eu --region r1 --host 127.0.0.1 --port "$RPORT" \
    --dead-after-s 25 --seconds "$SECONDS_RUN" >"$DIR/region.log" 2>&1 &
PIDS+=($!)
sleep 3
for i in $(seq 1 "$GROUPS_N"); do
    g=g$i; home=$DIR/$g; mkdir -p "$home"; gport=$(port)
    PRSM_EDGE_HOME=$home/gw $PRSM gateway --site lab --group "$g" --uplink "mqtt://127.0.0.1:$RPORT" \
        --region-site eu --region r1 --bridge-conf "$home/bridge.conf" --bridge-only 2>/dev/null
    cat >"$home/mosquitto.conf" <<CONF
listener $gport 127.0.0.1
allow_anonymous true
persistence false
log_dest file $home/mosquitto.log
max_queued_messages 20000
user $(id -un)
include_dir $home/conf.d
CONF
    mkdir -p "$home/conf.d" && cp "$home/bridge.conf" "$home/conf.d/bridge.conf"
    "$MOSQ" -c "$home/mosquitto.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    sleep 0.5
    PRSM_EDGE_HOME=$home/coord $PRSM coordinate --site lab --group "$g" --external "mqtt://127.0.0.1:$gport" \
        --no-advertise >"$home/coord.log" 2>&1 &
    PIDS+=($!)
    PRSM_EDGE_HOME=$home/agent $PRSM join --site lab --group "$g" --broker "mqtt://127.0.0.1:$gport" \
        --no-attest >"$home/agent.log" 2>&1 &
    PIDS+=($!)
    PRSM_EDGE_HOME=$home/gw $PRSM gateway --site lab --group "$g" --local "mqtt://127.0.0.1:$gport" \
        --uplink "mqtt://127.0.0.1:$RPORT" --region-site eu --region r1 >"$home/gateway.log" 2>&1 &
    PIDS+=($!)
done
wait "${PIDS[0]}" || true
echo "== the region's view (last lines of $DIR/region.log) =="
tail -n 3 "$DIR/region.log"
echo "== gateway link state =="
for i in $(seq 1 "$GROUPS_N"); do grep "^uplink" "$DIR/g$i/gateway.log" | tail -n 1; done
