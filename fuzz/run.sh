#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the
# committed seeds (fuzz/seeds/<target>) and the corpus earlier runs grew
# (fuzz/corpus/<target>, not committed). Not part of CI: it needs a nightly
# compiler (cargo +nightly fuzz) and `cargo install cargo-fuzz`.
# A crash leaves its input in fuzz/artifacts/<target>/ and stops the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    # cargo-fuzz needs nightly-only flags (-Zsanitizer); a stable compiler
    # takes them with RUSTC_BOOTSTRAP=1.
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
for target in route_select token_extract introspection_answer dpop_proof; do
    mkdir -p "corpus/$target"
    echo "==> $target for ${SECONDS_EACH}s"
    "${FUZZ[@]}" run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=1
done
