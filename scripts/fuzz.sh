#!/usr/bin/env bash
# A short, bounded fuzz run of every cargo-fuzz target in fuzz/ (the message decoder,
# kombu's JSON envelope, crontab parsing, routing-key matching), each for
# FUZZ_SECONDS (default 20) from the committed seed corpus (fuzz/corpus, made from
# PROTOCOL.md's captured messages by fuzz/seeds.py). `scripts/test.sh` runs it.
#
# libFuzzer and AddressSanitizer need unstable -Z flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them (no nightly is needed). A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/ (replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> <file>`).
#
# Usage: scripts/fuzz.sh [TARGET...]    FUZZ_SECONDS=300 scripts/fuzz.sh crontab
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-20}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -O   # every target, once

# New inputs libFuzzer finds go to a scratch copy: the committed corpus stays small.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/" 2>/dev/null || true
  log="$scratch/$target.log"
  printf '==> fuzz %s for %ss\n' "$target" "$seconds"
  if cargo fuzz run -O "$target" "$scratch/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 2 "$log"
  else
    tail -n 40 "$log"
    failed+=("$target")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
