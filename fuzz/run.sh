#!/usr/bin/env bash
# Builds the fuzz targets with the stable toolchain and runs each for a
# bounded time on a copy of its seed corpus.
#
#   fuzz/run.sh [seconds per target, default 20] [target...]
#
# Exits non-zero when a target crashes, leaks, times out or fails to build;
# the input that did it is left in $FUZZ_ARTIFACTS (default: a temp dir),
# whose path is printed. Extra libFuzzer flags can be given in FUZZ_FLAGS.
# To replay one: $CARGO_TARGET_DIR/<host triple>/release/<target> <input>.
#
# No nightly and no cargo-fuzz: libfuzzer-sys builds libFuzzer with the C++
# compiler, and the coverage instrumentation that cargo-fuzz would ask rustc
# for is asked for here with stable -C flags. The --target flag keeps those
# flags off build scripts and proc-macros, which must not be instrumented.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_head chunked config)

host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing"

# Not --locked: Cargo.lock pins what it lists, but a dependency added to
# openproxy since it was last refreshed must not fail the run.
(cd "$here" && cargo build --release --target "$host" --bins)

work="$(mktemp -d)"
artifacts="${FUZZ_ARTIFACTS:-$work/artifacts}"
mkdir -p "$artifacts"
echo "fuzz: working copies in $work, crash inputs go to $artifacts"

failed=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    mkdir -p "$corpus"
    cp "$here/corpus/$t/"* "$corpus/"
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    echo "fuzz: $t for ${seconds}s"
    # -timeout: one input taking over 10 s is a hang worth failing on.
    # ${FUZZ_FLAGS} unquoted on purpose: it holds several flags.
    # shellcheck disable=SC2086
    if ! "$CARGO_TARGET_DIR/$host/release/$t" "$corpus" "${dict[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$artifacts/$t-" ${FUZZ_FLAGS:-} 2>"$work/$t.log"; then
        failed+=("$t")
        tail -n 60 "$work/$t.log"
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: .*corpus)' "$work/$t.log" | tail -n 4 || true
    echo "fuzz: $t corpus $(find "$corpus" -type f | wc -l) files (seed $(find "$here/corpus/$t" -type f | wc -l))"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in $artifacts)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
# The working copies are only of interest after a failure.
[ -n "${FUZZ_ARTIFACTS:-}" ] || rm -rf "$work"
