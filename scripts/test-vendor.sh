#!/usr/bin/env bash
# Runs the vendored str0m's own unit tests (`cargo test --lib`): str0m's, and the ones our patches
# in vendor/patches add beside the code they change. The workspace builds vendor/str0m only as a
# dependency (through [patch]), so without this they would never run.
#
# The tests run on a copy under target/, because the published crate cannot be tested as it is:
#  - its manifest names optional crypto backends (str0m-openssl, str0m-rust-crypto, the Apple and
#    Windows ones) and a dev-dependency (str0m-netem 0.5) that the crates.io index cargo reaches
#    here does not have in the versions asked for, so cargo cannot resolve it; the copy's manifest
#    leaves them out (the tests that run use the default aws-lc-rs backend, as Huddle does);
#  - the SDP parser's tests read `docs/chrome-sdp.json`, which the published crate leaves out; the
#    copy gets vendor/tests/str0m-chrome-sdp.json, a Chromium-shaped audio+video offer (written
#    for this, not captured);
#  - the copy is a workspace of its own (it sits under target/, inside Huddle's);
#  - vendor/tests/str0m.Cargo.lock pins the test dependencies, so the run is `--locked`.
# vendor/str0m itself stays untouched (scripts/check-vendor.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
copy="$target/vendor-test/str0m"
rm -rf "$copy"
mkdir -p "$(dirname "$copy")"
cp -r vendor/str0m "$copy"
python3 - "$copy/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
s = open(path).read()
for feature in ["openssl", "openssl-dimpl", "vendored", "apple-crypto", "wincrypto", "wincrypto-dimpl", "rust-crypto"]:
    s, n = re.subn(r"^%s = \[[^\]]*\]\n" % re.escape(feature), "", s, flags=re.M)
    assert n == 1, f"feature {feature} not found once in {path}"
for table in [
    r"\[dependencies\.str0m-openssl\]",
    r"\[dependencies\.str0m-rust-crypto\]",
    r"\[dev-dependencies\.str0m-rust-crypto\]",
    r"\[dev-dependencies\.netem\]",
    r"\[target\.'cfg\(target_vendor = \"apple\"\)'\.dependencies\.str0m-apple-crypto\]",
    r'\[target\."cfg\(windows\)"\.dependencies\.str0m-wincrypto\]',
]:
    s, n = re.subn(table + r"[^\[]*", "", s)
    assert n == 1, f"{table} not found once in {path}"
# Its own workspace: the copy sits inside Huddle's (under target/).
s += "\n[workspace]\n"
open(path, "w").write(s)
PY
mkdir -p "$copy/docs"
cp vendor/tests/str0m-chrome-sdp.json "$copy/docs/chrome-sdp.json"
cp vendor/tests/str0m.Cargo.lock "$copy/Cargo.lock"
CARGO_TARGET_DIR="$target/vendor-test/target" cargo test --manifest-path "$copy/Cargo.toml" --lib --locked -q
