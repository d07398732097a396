#!/usr/bin/env bash
# The test command behind `make test`: the test tools (scripts/test-tools.sh), the guest boot check,
# then every test binary of the workspace, each under a time bound, then one summary line over all
# of them.
#
# Every test binary runs under `timeout` (ZTEE_TEST_TIMEOUT seconds, default 600): a test that
# hangs fails its binary with a message naming it, and the suite goes on. cargo builds the
# binaries once (`--no-run`); they are then run directly, from their package's directory as cargo
# would, so one bound covers exactly one binary.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
limit=${ZTEE_TEST_TIMEOUT:-600}
log=$(mktemp)
binaries=$(mktemp)
output=$(mktemp)
trap 'rm -f "$log" "$binaries" "$output"' EXIT

"$repo/scripts/test-tools.sh"
"$repo/guest/test-guest.sh" 2>&1 | tee -a "$log"
guest_status=${PIPESTATUS[0]}

# Build every test binary; list them as "package dir<TAB>executable<TAB>label", sorted by label.
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics \
  --manifest-path "$repo/Cargo.toml" |
  python3 "$repo/scripts/test_binaries.py" >"$binaries"
build_status=${PIPESTATUS[0]}
if ((build_status != 0)); then
  echo "test build failed (cargo exited $build_status)" | tee -a "$log"
fi

# The code interpreter's data image (guest/images/data.toml: a debootstrap, minutes when cold) is
# built here, outside the per-binary time bound, into the store tests/e2b_data_image.rs reads;
# with the same recipe it is a no-op. If it cannot be built here, that test builds it itself and
# fails with the reason.
if ((build_status == 0)); then
  echo "     Building the data image (guest/images/data.toml)" | tee -a "$log"
  ZTEE_DATA_DIR="${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/e2b-data-image" \
    timeout --kill-after=30 1800 "${CARGO_TARGET_DIR:-$repo/target}/debug/ztee" \
    image build "$repo/guest/images/data.toml" 2>&1 | tail -n 5 | tee -a "$log"
fi

timed_out=()
failed_binaries=()
while IFS=$'\t' read -r dir exe label; do
  echo "     Running $label" | tee -a "$log"
  # Into a file, not a pipe: a process a hung test left behind may hold its output open, and a
  # pipe reader would wait for it.
  (cd "$dir" && timeout --kill-after=30 "$limit" "$exe") >"$output" 2>&1
  status=$?
  tee -a "$log" <"$output"
  if ((status == 124 || status == 137)); then
    running=$(sed -n 's/^test \(.*\) has been running for over .*/\1/p' "$output" | tr '\n' ' ')
    echo "TIMEOUT: $label did not finish within ${limit}s and was killed; still running: ${running:-unknown}" |
      tee -a "$log"
    timed_out+=("$label")
  elif ((status != 0)); then
    failed_binaries+=("$label")
  fi
done <"$binaries"

echo "     Doc-tests" | tee -a "$log"
timeout --kill-after=30 "$limit" cargo test --workspace --locked --doc \
  --manifest-path "$repo/Cargo.toml" 2>&1 | tee -a "$log"
doc_status=${PIPESTATUS[0]}
((doc_status == 0)) || failed_binaries+=("doc-tests")

if ((${#timed_out[@]})); then
  echo "timed out: ${timed_out[*]}" | tee -a "$log"
fi
if ((${#failed_binaries[@]})); then
  echo "failed: ${failed_binaries[*]}" | tee -a "$log"
fi

# A binary killed for its time bound printed no result line: it counts as one failure.
awk '
  /^test result:/ { passed += $4; failed += $6 }
  /^[0-9]+ passed, [0-9]+ failed$/ { passed += $1; failed += $3 }
  /^TIMEOUT: / { failed += 1 }
  /^test build failed/ { failed += 1 }
  END { printf "%d passed, %d failed\n", passed, failed }
' "$log"
((guest_status == 0 && build_status == 0 && doc_status == 0 && ${#timed_out[@]} == 0 && ${#failed_binaries[@]} == 0))
