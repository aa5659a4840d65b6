#!/usr/bin/env bash
# Checks that vendor/str0m is str0m 0.25.0 as published on crates.io plus vendor/patches/*.patch,
# and vendor/dimpl dimpl 0.9.0 plus vendor/dimpl-patches/*.patch, and nothing else
# (vendor/README.md says why the copies exist and how to change them).
#
# Two steps:
#  1. Always, with no network: the patches are taken back out of a copy of vendor/str0m (in
#     reverse order) and what is left must be, file for file, the pristine files recorded in
#     vendor/str0m-0.25.0.files.sha256 (no file more, none less). An edit of vendor/str0m that
#     is not in a patch, or a patch that does not match the tree, fails here.
#  2. The record itself against the published crate: str0m-0.25.0.crate is taken from cargo's
#     registry cache, or fetched into it with `cargo fetch` (crates.io only) when it is not there
#     -- on a clean clone it never is, since the workspace builds vendor/str0m through [patch]
#     and cargo never downloads the original. Its sha256 must be the one in
#     vendor/str0m-0.25.0.crate.sha256 (the checksum crates.io's index lists, which cargo also
#     checks on download) and its files must hash as step 1's record says.
#     With --offline (or CHECK_VENDOR_OFFLINE=1) step 2 is left out and the script says so;
#     without it, a machine that cannot reach crates.io fails rather than pass unchecked.
#
# Why not the pristine tree committed beside the patched one: it would double 77 000 lines of
# someone else's code in the repository, and step 1 proves the same with a 130-line record.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

offline=${CHECK_VENDOR_OFFLINE:-0}
for arg in "$@"; do
  case "$arg" in
    --offline) offline=1 ;;
    *) echo "usage: $0 [--offline]" >&2; exit 2 ;;
  esac
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

fail() {
  echo "check-vendor: $*" >&2
  exit 1
}

# The files of a tree, sorted, with their sha256, in sha256sum's format.
hash_tree() {
  (cd "$1" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' sha256sum)
}

# Checks one vendored crate: NAME VERSION PATCH_DIR.
check() {
  local name=$1 version=$2
  local tree=vendor/$name
  local patches=("$3"/*.patch)
  local files_record=vendor/$name-$version.files.sha256
  local crate_record=vendor/$name-$version.crate.sha256
  local work
  work=$(mktemp -d "$scratch/$name.XXXX")
  # Step 1: the tree minus the patches is the recorded pristine tree.
  cp -r "$tree" "$work/unpatched"
  for ((i = ${#patches[@]} - 1; i >= 0; i--)); do
    # `git apply` outside a repository is a plain patch tool (no `patch` binary needed).
    (cd "$work/unpatched" && git apply -R --whitespace=nowarn "$root/${patches[i]}") ||
      fail "${patches[i]} does not come back out of $tree: the tree and the patch disagree"
  done
  LC_ALL=C sort -k2 "$files_record" > "$work/expected"
  hash_tree "$work/unpatched" > "$work/actual"
  if ! diff "$work/expected" "$work/actual" > "$work/diff"; then
    cat "$work/diff" >&2
    fail "$tree is not $name $version plus $3 (< the pristine files, > what the tree has)"
  fi
  echo "check-vendor: $tree = $name $version (${#patches[@]} patches, $(wc -l < "$work/expected") pristine files)"

  # Step 2: the record is the published crate.
  if [ "$offline" = 1 ]; then
    echo "check-vendor: offline: the record was not compared with the published crate"
    return 0
  fi
  crate_file=$name-$version.crate
  find_crate() {
    find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "$crate_file" -print -quit 2>/dev/null || true
  }
  crate=$(find_crate)
  if [ -z "$crate" ]; then
    # A scratch package whose only dependency is the crate; `cargo fetch` puts it in the cache.
    mkdir -p "$work/fetch/src"
    cat > "$work/fetch/Cargo.toml" <<EOF
[package]
name = "check-vendor-fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
$name = { version = "=$version", default-features = false }
[workspace]
EOF
    : > "$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch --quiet) ||
      fail "cannot fetch $crate_file from crates.io (use --offline to check the tree against the record only)"
    crate=$(find_crate)
    [ -n "$crate" ] || fail "cargo fetch did not leave $crate_file in the registry cache"
  fi
  (cd "$(dirname "$crate")" && sha256sum --quiet -c "$root/$crate_record") ||
    fail "$crate does not have the checksum in $crate_record"
  mkdir "$work/crate"
  tar -xzf "$crate" -C "$work/crate"
  (cd "$work/crate/$name-$version" && sha256sum --quiet -c "$work/expected") ||
    fail "$files_record does not match the published crate"
  echo "check-vendor: the record matches $crate_file from crates.io (sha256 $(cut -c1-16 "$crate_record")…)"
}

check str0m 0.25.0 vendor/patches
check dimpl 0.9.0 vendor/dimpl-patches
