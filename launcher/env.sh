# Sourced by the launcher scripts: where things are, and a build of `grdr` to run.
# GRDR_CACHE: set-up cache (venv, libtorch, shared cargo target dir); default ~/.cache/grdr.
GRDR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GRDR_CACHE="${GRDR_CACHE:-$HOME/.cache/grdr}"
export CARGO_TARGET_DIR="$GRDR_CACHE/target"
# Default dataset: BEIR SciFact beside the checkout (see README for getting it elsewhere).
export GRDR_SCIFACT="${GRDR_SCIFACT:-$GRDR_ROOT/../shared/datasets/scifact}"

# Builds grdr (dev profile: deps optimised, shared with the tests) and sets GRDR_BIN.
grdr_build() {
  (cd "$GRDR_ROOT" && cargo build --quiet --bin grdr) || return 1
  GRDR_BIN="$CARGO_TARGET_DIR/debug/grdr"
}
