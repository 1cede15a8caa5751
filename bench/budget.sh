#!/usr/bin/env bash
# tokengate's own work per cache hit against its budgets: runs
# `cargo bench --bench cache_hit` (unless --no-run: read the last results),
# then prints each component's criterion median next to its budget (the
# BUDGETS table in benches/cache_hit.rs) and the sum against the 3 µs target.
# Exits 1 when a component or the sum is over. Criterion options after `--`
# (e.g. `bench/budget.sh -- --measurement-time 2`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN=1
if [[ ${1:-} == --no-run ]]; then RUN=0; shift; fi
[[ ${1:-} != -- ]] || shift
((RUN == 0)) || cargo bench --quiet --bench cache_hit -- "$@" >&2
python3 - "${CARGO_TARGET_DIR:-target}/criterion" <<'PY'
import json, os, re, sys
root = sys.argv[1]
src = open("benches/cache_hit.rs").read()
budgets = re.findall(r'\("(hit/[^"]+)", (\d+)\)', src)
medians = {}
for d, _, files in os.walk(root):
    if d.endswith("/new") and "benchmark.json" in files and "estimates.json" in files:
        full = json.load(open(os.path.join(d, "benchmark.json")))["full_id"]
        medians[full] = json.load(open(os.path.join(d, "estimates.json")))["median"]["point_estimate"]
total = spent = 0
over = False
print("| component | median ns | budget ns | |")
print("|---|---:|---:|---|")
for name, budget in budgets:
    budget = int(budget)
    total += budget
    m = medians.get(name)
    if m is None:
        print(f"| {name} | not measured | {budget} | ? |")
        over = True
        continue
    spent += m
    ok = m <= budget
    over |= not ok
    print(f"| {name} | {m:.0f} | {budget} | {'ok' if ok else 'OVER'} |")
target = 3000
print(f"| **sum** | **{spent:.0f}** | {total} (target {target}) | {'ok' if spent <= target else 'OVER'} |")
sys.exit(1 if over or spent > target else 0)
PY
