#!/bin/sh
# Starts one Qdrant peer of the StatefulSet `$QDRANT_STATEFULSET` (pods <name>-0, <name>-1, ...),
# addressed through the headless Service `$QDRANT_HEADLESS_SERVICE`.
#   peer 0 founds the cluster:        --uri <its own p2p URL>
#   every other peer joins through 0: --bootstrap <peer 0's p2p URL> --uri <its own p2p URL>
# On a restart with existing storage the peer keeps its identity and cluster state
# (the flags are then only used to reach the other peers).
set -eu
P2P_PORT="${QDRANT__CLUSTER__P2P__PORT:-6335}"
ORDINAL="${HOSTNAME##*-}"
SELF="http://${HOSTNAME}.${QDRANT_HEADLESS_SERVICE}:${P2P_PORT}"
SEED="http://${QDRANT_STATEFULSET}-0.${QDRANT_HEADLESS_SERVICE}:${P2P_PORT}"
cd /qdrant
if [ "$ORDINAL" = "0" ]; then
  echo "qdrant peer $ORDINAL: founding the cluster as $SELF"
  exec ./entrypoint.sh --uri "$SELF"
fi
echo "qdrant peer $ORDINAL: joining through $SEED as $SELF"
exec ./entrypoint.sh --bootstrap "$SEED" --uri "$SELF"
