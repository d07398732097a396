#!/usr/bin/env bash
# The test command behind `make test`: the test tools (scripts/test-tools.sh), the guest boot check,
# then every crate's tests, then one summary line over all of them.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

"$repo/scripts/test-tools.sh"
"$repo/guest/test-guest.sh" 2>&1 | tee -a "$log"
guest_status=${PIPESTATUS[0]}
cargo test --workspace --locked --no-fail-fast --manifest-path "$repo/Cargo.toml" 2>&1 | tee -a "$log"
cargo_status=${PIPESTATUS[0]}

awk '
  /^test result:/ { passed += $4; failed += $6 }
  /^[0-9]+ passed, [0-9]+ failed$/ { passed += $1; failed += $3 }
  END { printf "%d passed, %d failed\n", passed, failed }
' "$log"
((guest_status == 0 && cargo_status == 0))
