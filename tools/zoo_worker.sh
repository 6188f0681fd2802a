#!/usr/bin/env bash
# Maintainers: train zoo runs one at a time and commit each entry as it is finished, so an
# interrupted build (a session's end, a crash) loses at most the run in flight; its checkpoints
# stay under WORK and the next call resumes it.  Each commit also rewrites the package's manifest of
# the shipped zoo (`icmix zoo manifest --write`; refused, and the entry left uncommitted, while any
# entry is damaged; two workers may commit a manifest naming the other's entry a moment before
# that entry's own commit).  Run one worker per core, on disjoint runs:
#
#   tools/zoo_worker.sh RUN_LIST [WORK]     # RUN_LIST: run names, one a line
#   PRESET=long tools/zoo_worker.sh ...     # the zoo tier (default cpu)
#
# The names of the cpu preset's runs the shipped zoo lacks:
#   .venv/bin/python -c "from icmix import zoo; [print(n) for n in zoo.preset_runs('cpu') if n not in zoo.entries(zoo.ZOO_ROOT)]"
set -uo pipefail
LIST=$(realpath "$1")
WORK=$(realpath -m "${2:-zoo-work}")
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
unset ICMIX_ZOO  # this builds the shipped zoo
ICMIX=${ICMIX:-.venv/bin/icmix}
PRESET=${PRESET:-cpu}
while read -r name; do
    [ -z "$name" ] && continue
    entry=src/icmix/zoo/$PRESET/$name
    [ -f "$entry/provenance.json" ] && continue
    echo "$(date +%T) start $name"
    if ! $ICMIX zoo build --preset "$PRESET" --runs "$name" --work "$WORK" --threads 1 --no-progress </dev/null; then
        echo "$(date +%T) FAILED $name"; continue
    fi
    committed=0
    for _ in $(seq 1 30); do  # another worker may hold git's index lock for a moment
        # the package's manifest of the shipped zoo (icmix/zoo/shipped.py) seals the new entry too
        if $ICMIX zoo manifest --write >/dev/null && git add -- "$entry" src/icmix/zoo/shipped.py \
                && git commit -q -m "zoo ($PRESET): $name" -- "$entry" src/icmix/zoo/shipped.py; then
            committed=1; echo "$(date +%T) committed $name"; break
        fi
        sleep 5
    done
    [ "$committed" = 1 ] || echo "$(date +%T) NOT COMMITTED $name (git kept failing): commit $entry by hand"
done < "$LIST"
echo "$(date +%T) worker done"
