# Shared by android_demo/ci.sh and ios_demo/ci.sh: counters, logging, the one summary line, counted
# checks and the benchmark-JSON schema check. Source it after setting CI_NAME, SUITE_LABEL, REPO, OUT.
PASSED=0
FAILED=0
SUMMARY_PRINTED=0
log() { echo "[$CI_NAME ci] $*" >&2; }
summary() {
  if [ "$SUMMARY_PRINTED" = 0 ]; then
    SUMMARY_PRINTED=1
    echo "$SUITE_LABEL: $PASSED passed, $FAILED failed"
  fi
}
check() { # name, command...: one counted check
  local name="$1"
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    log "check ok: $name"
  else
    FAILED=$((FAILED + 1))
    log "check FAILED: $name"
  fi
}
bench_schema() {
  [ -s "$OUT/benchmark.json" ] &&
    (cd "$REPO" && python3 -c 'import json,sys; from benchmarks.schema import validate; validate(json.load(open(sys.argv[1]))); print("benchmark JSON valid")' "$OUT/benchmark.json") >&2
}
