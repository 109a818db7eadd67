#!/bin/sh
# exec-provider test hook: prints to stdout and a long stderr (FIRST-MARKER first,
# LAST-MARKER last), then exits with $EXIT_CODE.
echo "stdout of the hook"
echo "FIRST-MARKER at the start of stderr" >&2
i=0
while [ "$i" -lt 20 ]; do
    echo "filler line $i of the hook's stderr output" >&2
    i=$((i + 1))
done
echo "LAST-MARKER: zone example.test not managed here ($1 $2)" >&2
exit "${EXIT_CODE:-1}"
