#!/usr/bin/env bash
# Runs every Huddle test on a fresh machine: installs what the tests need, then checks formatting,
# lints and runs the whole workspace's tests (unit, integration over real sockets, doc examples).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need (none yet beyond the Rust toolchain and gcc; the media and browser
# issues add theirs here). Installed only when missing, so a warm machine starts at once.
apt_packages=()
need_apt=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
