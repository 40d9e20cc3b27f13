#!/usr/bin/env bash
# Run a real ExecuTorch bundle (python -m export.executorch) through the app's ExecuTorchRunner and
# Pipeline on a desktop JVM: a JNI stand-in of org.pytorch.executorch.Module
# (app/src/jvmTest/jni) over the ExecuTorch 1.5.1 C++ runtime from the pip wheel (headers and
# libexecutorch*.so; no torch needed). Checks the golden tensors (as "Verify bundle" does) and a
# free-running generation. Not part of ci.sh: it needs an exported bundle (minutes of lowering).
#   bash android_demo/tools/jvm_bundle_run.sh BUNDLE_DIR
#   default: Module(share_memory_arenas=false), as the AAR constructs it
#   ET_SHARE_MEMORY_ARENAS=true ...   # shared arenas: what a per-scale bundle (--ar-layout scales) needs
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REPO="$(dirname "$HERE")"
BUNDLE="$(cd "${1:?usage: jvm_bundle_run.sh BUNDLE_DIR}" && pwd)"
CACHE="${HART_MOBILE_CACHE:-/var/cache/hart-mobile}"
OUT="$HERE/build/jvm-run"
K="$CACHE/node/node_modules/kotlin-compiler"
J=/usr/share/java

[ -d "$HERE/build/ci/test" ] || bash "$HERE/ci.sh" >/dev/null   # compiled core + runner + tests
ET=""
if [ -x "$REPO/.venv/bin/python" ]; then
  ET=$("$REPO/.venv/bin/python" -c 'import executorch; print(next(iter(executorch.__path__)))' 2>/dev/null || true)
fi
if [ -z "$ET" ] || [ ! -f "$ET/lib/libexecutorch.so" ]; then
  ET="$CACHE/executorch-1.5.1/executorch"
  if [ ! -f "$ET/lib/libexecutorch.so" ]; then
    mkdir -p "$CACHE/executorch-1.5.1"
    python3 -m pip download --no-deps --only-binary=:all: executorch==1.5.1 -d "$CACHE/executorch-1.5.1" >&2
    (cd "$CACHE/executorch-1.5.1" && python3 -m zipfile -e executorch-1.5.1-*.whl .)
  fi
fi
JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"
mkdir -p "$OUT/classes"
g++ -std=c++17 -O2 -fPIC -shared -o "$OUT/libet_jni.so" "$HERE/app/src/jvmTest/jni/et_jni.cpp" \
  -I"$ET/include" -I"$ET/include/executorch/runtime/core/portable_type/c10" \
  -I"$JAVA_HOME/include" -I"$JAVA_HOME/include/linux" -DC10_USING_CUSTOM_GENERATED_MACROS \
  -L"$ET/lib" -Wl,--no-as-needed -lexecutorch -lexecutorch_kernels_optimized -lexecutorch_backend_xnnpack -ldl \
  -Wl,-rpath,"$ET/lib"
S="$HERE/app/src/jvmTest/stubs/org/pytorch/executorch"
javac -d "$OUT/classes" "$HERE/app/src/jvmTest/jni/org/pytorch/executorch/Module.java" "$S/Tensor.java" "$S/EValue.java" "$S/DType.java"
# The AAR links ExecuTorch's LLM custom-op kernels (the split AR layout's update_cache / custom_sdpa);
# the wheel ships them in a library of their own that links libtorch and the Python bindings.
KERNELS="$ET/extension/llm/custom_ops/libcustom_ops_aot_lib.so"
LIBPYTHON=$("$REPO/.venv/bin/python" -c 'import sysconfig as s; print(s.get_config_var("LIBDIR") + "/" + s.get_config_var("INSTSONAME"))')
LD_PRELOAD="$LIBPYTHON" java -Det.jni="$OUT/libet_jni.so" -Det.kernelLibs="$KERNELS" \
  -Det.shareMemoryArenas="${ET_SHARE_MEMORY_ARENAS:-false}" \
  -cp "$OUT/classes:$HERE/build/ci/core:$HERE/build/ci/test:$J/com.android.json.jar:$K/lib/kotlin-stdlib.jar" \
  demo.app.JvmBundleRunKt "$BUNDLE"
