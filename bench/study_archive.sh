#!/usr/bin/env bash
# The budget study across machines (bench/budget_study.sh): what a fresh machine needs to go
# on where the last one stopped, kept under bench/study/ in the repository.
#   bash bench/study_archive.sh restore   # before the study: unpack the runs, copy the summaries
#   bash bench/study_archive.sh save      # after (the study paused): pack what is new
# Kept: one archive per finished score, probe and compare run (the small runs the compares
# and reports read; floe runs pack, checked on unpack), the study's --json summaries, every
# run's machine time and each warm-up's summary (runs.json: what the reports read of runs
# not kept), and
# (written there by STORAGE=sqlite:///bench/study/cells.sqlite3) every compare cell's
# result. Left out: warm-ups and trainings (megabytes of weights each); an analysis whose
# score run is restored is not computed again, and a finished cell is read from the storage.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
keep=${STUDY_KEEP:-bench/study}      # what the repository keeps
out=${STUDY_OUT:-bench/results/budget}  # where the study writes its summaries
mkdir -p "$keep/runs" "$keep/budget" "$out"
case "${1:-}" in
  restore)
    for archive in "$keep"/runs/*.tar.gz; do
      [ -e "$archive" ] && floe runs unpack --archive "$archive" > /dev/null
    done
    cp -n "$keep"/budget/*.json "$out"/ 2>/dev/null || true
    echo "restored $(ls "$keep"/runs | wc -l) runs, $(ls "$keep"/budget | wc -l) summaries";;
  save)
    floe runs list --json | .venv/bin/python -c '
import json, sys
for row in json.load(sys.stdin)["runs"]:
    if row["status"] == "done" and row["kind"] in ("score", "probe", "compare"):
        print(row["run"])' | while read -r run; do
      # Packed again when the run changed since (a probe given its set search); the same run packs
      # to the same bytes, so an unchanged one leaves the repository as it was.
      [ "$keep/runs/$run.tar.gz" -nt "${FLOE_CACHE:-cache}/runs/$run/state.json" ] ||
        floe runs pack "$run" --archive "$keep/runs/$run.tar.gz" > /dev/null
    done
    find "$out" -maxdepth 1 -name '*.json' -size +0 -exec cp {} "$keep/budget/" \;  # not a killed step's empty one
    # Every run's machine time and each warm-up's summary, for the reports once they are gone.
    STUDY_KEEP="$keep" .venv/bin/python -c 'import os, pathlib, bench.report_results as r
r.keep_runs(pathlib.Path(os.environ["STUDY_KEEP"]) / "runs.json")'
    echo "kept $(ls "$keep"/runs | wc -l) runs, $(ls "$keep"/budget | wc -l) summaries";;
  *) echo "usage: bash bench/study_archive.sh restore|save" >&2; exit 2;;
esac
