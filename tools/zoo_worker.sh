#!/usr/bin/env bash
# Maintainers: train zoo runs one at a time and commit each entry as it is finished, so an
# interrupted build (a session's end, a crash) loses at most the run in flight; its checkpoints
# stay under WORK and the next call resumes it.  Run one worker per core, on disjoint runs:
#
#   tools/zoo_worker.sh RUN_LIST [WORK]     # RUN_LIST: run names, one a line (icmix zoo build --help)
#
# The names of the cpu preset's runs the zoo lacks:
#   python -c "from icmix import zoo; [print(n) for n in zoo.preset_runs('cpu') if n not in zoo.entries()]"
set -uo pipefail
LIST=$1
WORK=${2:-zoo-work}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
ICMIX=${ICMIX:-.venv/bin/icmix}
while read -r name; do
    [ -z "$name" ] && continue
    entry=src/icmix/zoo/cpu/$name
    [ -f "$entry/provenance.json" ] && continue
    echo "$(date +%T) start $name"
    if ! $ICMIX zoo build --preset cpu --runs "$name" --work "$WORK" --threads 1 --no-progress; then
        echo "$(date +%T) FAILED $name"; continue
    fi
    for _ in $(seq 1 30); do  # another worker may hold git's index lock for a moment
        if git add -- "$entry" && git commit -q -m "zoo (cpu): $name" -- "$entry"; then
            echo "$(date +%T) committed $name"; break
        fi
        sleep 5
    done
done < "$LIST"
echo "$(date +%T) worker done"
