#!/bin/sh
# exec-provider test hook that never finishes: it starts a background `sleep`, writes
# "<own pid> <child pid>" to $PIDS_TO and sleeps. With IGNORE_TERM=1 it (and its
# children) ignore SIGTERM, so only the provider's SIGKILL of the group ends them.
if [ "${IGNORE_TERM:-}" = 1 ]; then
    trap '' TERM
fi
sleep 100 &
echo "$$ $!" > "$PIDS_TO"
echo "sleepy hook started" >&2
sleep 100
