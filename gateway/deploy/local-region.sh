#!/usr/bin/env bash
# A real multi-process region on one machine, from the plain commands (every broker keeps its ACLs; no
# --external, no hand-written broker configuration): one `prsm-edge region` (its Mosquitto with dynamic
# security, and the regional coordinator) and N groups, each `prsm-edge coordinate` (its own Mosquitto),
# `prsm-edge join` (one member) and `prsm-edge gateway`. `prsm-edge region add-group` makes each group's
# login on the region's broker; the gateway makes its own login on the group's broker and installs its
# bridge there, and `coordinate` restarts its broker once to carry it. Every process has its own state
# folder. Prints the region's view, then stops everything it started.
# Usage: gateway/deploy/local-region.sh [GROUPS=3] [SECONDS=40]
set -euo pipefail
GROUPS_N=${1:-3}
SECONDS_RUN=${2:-40}
PRSM=${PRSM:-prsm-edge}
DIR=$(mktemp -d /tmp/prsm-region.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 100); do [ -e "$1" ] && return 0; sleep 0.2; done; echo "no $1" >&2; exit 1; }

RPORT=$(port)
PRSM_EDGE_HOME=$DIR/region $PRSM region --site eu --region r1 --host 127.0.0.1 --port "$RPORT" --ws-port 0 \
    --dead-after-s 25 --seconds "$SECONDS_RUN" >"$DIR/region.log" 2>&1 &
PIDS+=($!)
wait_for "$DIR/region/region/r1/broker/admin.secret"
sleep 1  # the broker starts listening just after writing its admin secret
for i in $(seq 1 "$GROUPS_N"); do
    g=g$i; home=$DIR/$g; mkdir -p "$home"; gport=$(port)
    # The region's host makes the group's login; it prints the gateway command with it.
    login=$(PRSM_EDGE_HOME=$DIR/region $PRSM region --site eu --region r1 add-group "lab/$g")
    user=$(sed -n 's/.*--uplink-username \([^ ]*\).*/\1/p' <<<"$login")
    pass=$(sed -n 's/.*--uplink-password=\([^ ]*\).*/\1/p' <<<"$login")
    PRSM_EDGE_HOME=$home/host $PRSM coordinate --site lab --group "$g" --host 127.0.0.1 --port "$gport" \
        --ws-port 0 --no-advertise >"$home/coord.log" 2>&1 &
    PIDS+=($!)
    PRSM_EDGE_HOME=$home/agent $PRSM join --site lab --group "$g" --broker "mqtt://127.0.0.1:$gport" \
        --no-attest >"$home/agent.log" 2>&1 &
    PIDS+=($!)
    wait_for "$home/host/coordinator/$g/broker/admin.secret"
    # Same PRSM_EDGE_HOME as `coordinate`: the gateway finds that broker and sets itself up there.
    PRSM_EDGE_HOME=$home/host $PRSM gateway --site lab --group "$g" --uplink "mqtt://127.0.0.1:$RPORT" \
        --region-site eu --region r1 --uplink-username "$user" --uplink-password="$pass" \
        >"$home/gateway.log" 2>&1 &
    PIDS+=($!)
done
wait "${PIDS[0]}" || true
grep -m 1 "^dashboard:" "$DIR/region.log" || true
echo "== the region's view (last lines of $DIR/region.log) =="
tail -n 3 "$DIR/region.log"
echo "== gateway link state =="
for i in $(seq 1 "$GROUPS_N"); do grep "^uplink" "$DIR/g$i/gateway.log" | tail -n 1; done
