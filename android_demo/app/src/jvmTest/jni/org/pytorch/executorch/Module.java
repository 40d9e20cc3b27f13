package org.pytorch.executorch;

/**
 * JVM stand-in of the AAR's Module backed by the real ExecuTorch 1.5.1 C++ runtime (the pip wheel's
 * libexecutorch*.so) through et_jni.cpp, used by android_demo/tools/jvm_bundle_run.sh to run real
 * .pte bundles through the app's unchanged ExecuTorchRunner on a desktop JVM. Same public
 * signatures as the AAR (load, loadMethod, forward, execute, destroy); Tensor / EValue / DType come
 * from ../stubs. Not the AAR's fbjni code. `-Det.kernelLibs=a.so:b.so` loads kernel libraries that the
 * AAR links in but the wheel ships separately (the LLM custom ops of the split AR layout).
 */
public class Module {
  static {
    System.load(System.getProperty("et.jni"));
    for (String lib : System.getProperty("et.kernelLibs", "").split(":")) {
      if (!lib.isEmpty()) nativeLoadLibrary(lib);
    }
  }

  private long handle;

  private Module(long handle) {
    this.handle = handle;
  }

  private static native void nativeLoadLibrary(String path);

  private static native long nativeLoad(String path, boolean shareMemoryArenas);

  private static native int nativeLoadMethod(long handle, String method);

  private static native Object[] nativeExecute(long handle, String method, Object[] data, long[][] shapes);

  private static native void nativeDestroy(long handle);

  public static Module load(String modelPath) {
    boolean share = Boolean.parseBoolean(System.getProperty("et.shareMemoryArenas", "true"));
    long h = nativeLoad(modelPath, share);
    if (h == 0) throw new RuntimeException("ExecuTorch could not load " + modelPath);
    return new Module(h);
  }

  public int loadMethod(String methodName) {
    return nativeLoadMethod(handle, methodName);
  }

  public EValue[] forward(EValue... inputs) {
    return execute("forward", inputs);
  }

  public EValue[] execute(String methodName, EValue... inputs) {
    Object[] data = new Object[inputs.length];
    long[][] shapes = new long[inputs.length][];
    for (int i = 0; i < inputs.length; i++) {
      Tensor t = inputs[i].toTensor();
      shapes[i] = t.shape();
      data[i] = t.dtype() == DType.INT64 ? t.getDataAsLongArray() : t.getDataAsFloatArray();
    }
    Object[] out = nativeExecute(handle, methodName, data, shapes);
    EValue[] r = new EValue[out.length / 2];
    for (int k = 0; k < r.length; k++) {
      long[] shape = (long[]) out[2 * k + 1];
      Object d = out[2 * k];
      r[k] = EValue.from(d instanceof float[] ? Tensor.fromBlob((float[]) d, shape) : Tensor.fromBlob((long[]) d, shape));
    }
    return r;
  }

  public void destroy() {
    if (handle != 0) nativeDestroy(handle);
    handle = 0;
  }
}
