#!/usr/bin/env bash
# ios_demo CI on Linux (no Xcode, no Core ML): Swift 6.0.3 from Debian trixie's swiftlang in a
# debootstrap chroot cached at $HART_MOBILE_CACHE/swift-chroot (built from scratch when missing), then
#   1. swift build + swift test of the DemoCore package (XCTest; golden vectors from docs/),
#   2. the benchmark JSON a test wrote, validated with benchmarks/schema.py (stdlib only),
#   3. swiftc -parse over the SwiftUI / Core ML app and benchmark-test sources (syntax only: no
#      SwiftUI/CoreML/Apple XCTest on Linux),
#   4. swift-format lint --strict, 5. a grep that DemoCore imports nothing but Foundation,
#   6. `python -m benchmarks.ios --log` over the marker-framed JSON a test emitted (Swift -> Python).
# Prints exactly one line "swift: N passed, N failed" (XCTest tests + the 5 checks 2-6) and exits
# non-zero on any failure, setup included. The chroot's /proc mount is always undone (trap).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
CACHE="${HART_MOBILE_CACHE:-/var/cache/hart-mobile}"
ROOT="$CACHE/swift-chroot"
SUITE=trixie
INNER=/work/hart              # the repo's ios_demo/ and docs/ are copied here inside the chroot
OUT="$ROOT$INNER/out"

CI_NAME=ios
SUITE_LABEL=swift
# shellcheck source=../tools/ci_lib.sh
source "$REPO/tools/ci_lib.sh"
MOUNTED=()
cleanup() {
  local rc=$?
  for m in "${MOUNTED[@]}"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  for m in "$ROOT.tmp/proc" "$ROOT.tmp/sys"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  if [ "$rc" != 0 ] && [ "$SUMMARY_PRINTED" = 0 ]; then
    [ "$FAILED" = 0 ] && FAILED=1   # setup or build failure: never report a clean run
    log "aborted (exit $rc)"
    summary
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
in_chroot() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/libexec/swift/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"; }

t_start=$(date +%s)

# ---- toolchain: a trixie chroot with swiftlang ------------------------------------------------
debian_mirror() {
  local m=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || { log "no Debian mirror found in /etc/apt sources"; return 1; }
  echo "${m%/}"
}
if [ ! -f "$ROOT/.hart-ready" ] || [ ! -x "$ROOT/usr/libexec/swift/bin/swift" ]; then
  log "building the Swift chroot in $ROOT (first run on this machine)"
  if ! command -v debootstrap >/dev/null; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
  fi
  MIRROR=$(debian_mirror)
  mkdir -p "$CACHE"
  for d in "$ROOT" "$ROOT.tmp"; do   # never rm -rf through a live /proc or /sys mount
    for m in "$d/proc" "$d/sys"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  done
  rm -rf "$ROOT.tmp"
  debootstrap --variant=minbase "$SUITE" "$ROOT.tmp" "$MIRROR" >&2
  cp /etc/resolv.conf "$ROOT.tmp/etc/"
  chroot "$ROOT.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends swiftlang libc6-dev libstdc++-14-dev' >&2
  chroot "$ROOT.tmp" /usr/bin/env -i PATH=/usr/bin:/bin sh -c 'apt-get clean'
  touch "$ROOT.tmp/.hart-ready"
  rm -rf "$ROOT"
  mv "$ROOT.tmp" "$ROOT"
fi
mkdir -p "$ROOT/proc"
if ! mountpoint -q "$ROOT/proc"; then
  mount -t proc proc "$ROOT/proc"   # required: without it libswiftCore.so is not found
  MOUNTED+=("$ROOT/proc")
fi
in_chroot swift --version >&2
t_tools=$(date +%s)
log "toolchain ready in $((t_tools - t_start)) s"

# ---- sources into the chroot (the package's .build cache is kept between runs) ----------------
mkdir -p "$ROOT$INNER/ios_demo/DemoCore"
rm -rf "$ROOT$INNER/docs" "$ROOT$INNER/ios_demo/App" "$ROOT$INNER/ios_demo/BenchmarkTests" "$ROOT$INNER/ios_demo/DemoCore/Sources" \
  "$ROOT$INNER/ios_demo/DemoCore/Tests" "$OUT"
tar -C "$REPO" -cf - --exclude=.build --exclude=.swiftpm ios_demo docs | tar -C "$ROOT$INNER" -xf -
mkdir -p "$OUT"

# ---- build + tests -----------------------------------------------------------------------------
log "swift build"
in_chroot sh -c "cd $INNER/ios_demo/DemoCore && swift build --build-tests" >&2
t_build=$(date +%s)
log "built in $((t_build - t_tools)) s"
set +e
in_chroot env BENCHMARK_OUT="$INNER/out/benchmark.json" BENCHMARK_FRAMED_OUT="$INNER/out/benchmark-framed.log" REPO_ROOT="$INNER" \
  sh -c "cd $INNER/ios_demo/DemoCore && swift test --skip-build --disable-swift-testing" >"$OUT/xctest.log" 2>&1
test_rc=$?
set -e
grep -vE "^Test Case '.*' (started|passed)" "$OUT/xctest.log" >&2 || true
line=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$OUT/xctest.log" | tail -1 || true)
if [ -z "$line" ]; then
  log "could not read the XCTest summary (swift test exit $test_rc)"
  FAILED=$((FAILED + 1))
else
  n=$(echo "$line" | sed -E 's/.*Executed ([0-9]+) tests?, with ([0-9]+) failures?.*/\1/')
  f=$(echo "$line" | sed -E 's/.*Executed ([0-9]+) tests?, with ([0-9]+) failures?.*/\2/')
  if [ "$n" = 0 ]; then
    log "XCTest ran no test"
    FAILED=$((FAILED + 1))
  fi
  PASSED=$((PASSED + n - f))
  FAILED=$((FAILED + f))
  [ "$test_rc" = 0 ] || [ "$f" != 0 ] || { log "swift test exit $test_rc with 0 failures"; FAILED=$((FAILED + 1)); }
fi

# ---- checks ------------------------------------------------------------------------------------
check "benchmark JSON matches benchmarks/schema.py" bench_schema
app_files=$(cd "$HERE" && ls App/*.swift BenchmarkTests/*.swift | sed "s#^#$INNER/ios_demo/#" | tr '\n' ' ')
check "swiftc -parse App/*.swift BenchmarkTests/*.swift" in_chroot sh -c "swiftc -parse $app_files >&2"
check "swift-format lint --strict" in_chroot sh -c "cd $INNER/ios_demo && swift-format lint --strict --configuration .swift-format -r DemoCore/Sources DemoCore/Tests DemoCore/Package.swift App BenchmarkTests >&2"
foundation_only() { ! grep -rnE '^\s*import ' "$HERE/DemoCore/Sources/DemoCore" | grep -vE 'import Foundation$'; }
check "DemoCore imports only Foundation" foundation_only
bench_framed() {
  [ -s "$OUT/benchmark-framed.log" ] &&
    (cd "$REPO" && python3 -m benchmarks.ios --log "$OUT/benchmark-framed.log" --out "$OUT/ios-benchmark.json") >&2
}
check "benchmarks.ios parses the framed JSON a test emitted" bench_framed

t_end=$(date +%s)
log "tests + checks in $((t_end - t_build)) s; total $((t_end - t_start)) s"
summary
[ "$FAILED" = 0 ]
