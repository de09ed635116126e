#!/usr/bin/env bash
# A failed rank never hangs the others: under `mpirun -np 2`, rank 1 of
# failing_rank dies, throws or hangs while rank 0 is in collectives; the job
# must end with an error within 30 s, and its output must name the rank that
# failed (or, for a hang, the collective that timed out on rank 0).
#   failures.sh MPIRUN_AND_FLAGS... -- FAILING_RANK_BINARY
set -u
mpirun=()
while [ "$1" != "--" ]; do mpirun+=("$1"); shift; done
shift
bin=$1
status=0
for mode in kill throw hang; do
  start=$(date +%s)
  out=$(timeout 60 "${mpirun[@]}" -np 2 "$bin" "$mode" 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  case $mode in
    kill)  want="rank 1" ;;
    throw) want="rank 1 of 2: rank 1 fails on purpose" ;;
    hang)  want="on rank 0 of 2 did not complete within 2 s" ;;
  esac
  if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $elapsed -ge 30 ] || ! grep -q "$want" <<<"$out"; then
    echo "FAIL $mode: exit $rc after ${elapsed}s; expected an error naming '$want' within 30 s. Output:"
    echo "$out"
    status=1
  else
    echo "ok   $mode: the job ended with exit $rc after ${elapsed}s, naming '$want'"
  fi
done
exit $status
