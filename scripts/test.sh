#!/usr/bin/env bash
# Runs every Huddle test on a fresh machine: installs what the tests need, then checks formatting,
# lints and runs the whole workspace's tests (unit, integration over real sockets, doc examples).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need beyond the Rust toolchain and gcc (huddle-media links libopus and
# libvpx, found through pkg-config; the SDK's `device` feature, on in huddle-cli, links ALSA through
# cpal; crates/huddle-cli/tests/devices.rs runs a PulseAudio server of its own behind ALSA's `pulse`
# device (pulseaudio, pulseaudio-utils for pactl/parec, libasound2-plugins); the browser
# tests drive Debian's chromium, and firefox-esr (web/tests/firefox.test.js, with a PulseAudio
# server of its own); the network namespace tests, `crates/huddle-cli/tests/netns.rs`
# and the firewall tests in web/tests, need `ip` and `nft`, and run coturn; web/tests/tls.test.js
# and the firewall tests make their certificates with the openssl command;
# crates/huddle-server/tests/reverse_proxy.rs runs docs/deploy.md's nginx and Caddy setups,
# started by hand on 127.0.0.1; systemd-analyze checks the unit file; crates/huddle-server/tests/cluster.rs
# starts its own redis-server on a free loopback port). A fresh machine may have no
# Python or Node.js at all: the tests run `python3` (an independent token decoder, the speech
# scorers) and `node`/`npm` (the browser tests), and PyPI's `pesq` has no wheels, so it is
# compiled against Python's headers. Installed only when missing, so a warm machine starts at once.
apt_packages=(libopus-dev libvpx-dev pkg-config ffmpeg chromium firefox-esr libasound2-dev pulseaudio pulseaudio-utils libasound2-plugins iproute2 nftables coturn openssl nginx-light caddy systemd redis-server)
need_apt=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v python3 >/dev/null || need_apt+=(python3 python3-venv python3-dev)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
apt_install() {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi
# promtool checks /metrics (crates/huddle-server/tests/metrics.rs). It comes with Debian's
# prometheus, whose recommends (node exporter, IPMI tools) the tests do not need; the server
# itself is not wanted running.
if ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus
  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

# The tests' Python packages go into a virtualenv under target/, put first on PATH so that every
# `python3` the tests start is this one. Debian 12's own python3 refuses `pip install` outside a
# venv (PEP 668, "externally-managed-environment"); a venv leaves the system's Python untouched
# (no `--break-system-packages`), works the same with any other python3, and `cargo clean` removes it.
venv="$PWD/target/test-venv"
if [ ! -x "$venv/bin/python3" ]; then
  rm -rf "$venv"
  # Debian ships venv's pip bootstrap (ensurepip) and the C headers separately from python3.
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
fi
python3_headers() {
  python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null
}
python3_headers || apt_install python3-dev
export PATH="$venv/bin:$PATH"

# Python's `cryptography` decodes tokens independently of our Rust code in the CLI tests.
python3 -c "import cryptography" 2>/dev/null || python3 -m pip install -q cryptography
# The SDK's media tests score received speech with wideband PESQ (PyPI `pesq`, built from source
# against numpy, so numpy goes first) after aligning it with numpy/scipy.
python3 -c "import numpy, scipy" 2>/dev/null || python3 -m pip install -q numpy scipy
python3 -c "import pesq" 2>/dev/null || python3 -m pip install -q pesq
# ... and intelligibility with STOI (PyPI `pystoi`) in the loss tests (`tests/quality.rs`).
python3 -c "import pystoi" 2>/dev/null || python3 -m pip install -q pystoi
# An independent WebRTC stack for the interop test (`crates/huddle-cli/tests/aiortc_peer.py`):
# aiortc (wheels, with PyAV) and a WebSocket client for its signaling.
python3 -c "import aiortc, websockets" 2>/dev/null || python3 -m pip install -q aiortc websockets

# WebDriver for Firefox (web/tests/firefox.js): geckodriver is not packaged by Debian; it builds
# from crates.io (about 4 minutes on 2 cores) into target/tools, once.
gecko_root="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tools"
[ -x "$gecko_root/bin/geckodriver" ] || cargo install geckodriver --version 0.37.1 --locked --root "$gecko_root"

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

# vendor/str0m is str0m 0.25.0 from crates.io plus vendor/patches, nothing else (vendor/README.md).
echo "== vendor/str0m"
scripts/check-vendor.sh
# ... and its own unit tests pass, our patches' among them (on a copy: scripts/test-vendor.sh says why).
echo "== vendor/str0m unit tests"
scripts/test-vendor.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The SDK's microphone/speaker code (cpal) is behind its `device` feature: lint it too.
cargo clippy -p huddle --features device --all-targets --locked -- -D warnings
# The SFU's in-memory network and the forwarding benchmark are behind `testkit`.
cargo clippy -p huddle-server --features testkit --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# The forwarding benchmark once, briefly (every player must get every packet).
cargo test -p huddle-server --features testkit --bench forward --locked
# The recording benchmark once, briefly (every packet written; docs/operations.md has its figures).
HUDDLE_RECORD_MINUTES=1 HUDDLE_RECORD_ROUNDS=1 cargo test -p huddle-server --features testkit --bench record --locked
# With the feature on, a machine without a sound card refuses the devices with a numbered error.
cargo test -p huddle --features device --locked --test device

# The systemd unit of docs/deploy.md is one systemd accepts (pointed at the binary built here).
echo "== deploy/huddle.service"
unit_dir=$(mktemp -d)
sed "s|/usr/local/bin/huddle-server|$(realpath "${CARGO_TARGET_DIR:-target}")/debug/huddle-server|" \
  deploy/huddle.service > "$unit_dir/huddle.service"
systemd-analyze verify "$unit_dir/huddle.service"
rm -rf "$unit_dir"

# The debug page and huddle.js in a real browser (web/tests): playwright-core (pinned in
# web/tests/package-lock.json) drives Debian's chromium against a `huddle serve` in dev mode on
# 127.0.0.1, which the tests start from the binary built here (the page is compiled into it).
# interop.test.js also runs `huddle call` clients and scores speech with numpy/scipy/pesq (above).
echo "== browser tests (web/tests)"
cargo build -p huddle-cli --locked
(cd web/tests && npm ci --include=dev --no-audit --no-fund --loglevel=error && node --test --test-concurrency=1)
