package org.pytorch.executorch;

/**
 * Stand-in with the signatures of org.pytorch.executorch.Module that the app uses (load, loadMethod,
 * execute, destroy). The static {@link #backend} hook is NOT part of the AAR: JVM tests set it to
 * decide what "the program" returns.
 */
public class Module {
  /** Test hook (not in the AAR). */
  public interface Backend {
    EValue[] execute(String modelPath, String methodName, EValue[] inputs);
  }

  public static Backend backend;
  public static java.util.List<String> loaded = new java.util.ArrayList<>();

  private final String modelPath;
  private boolean destroyed;

  private Module(String modelPath) {
    this.modelPath = modelPath;
  }

  public static Module load(String modelPath) {
    loaded.add(modelPath);
    return new Module(modelPath);
  }

  public int loadMethod(String methodName) {
    return 0;
  }

  public EValue[] forward(EValue... inputs) {
    return execute("forward", inputs);
  }

  public EValue[] execute(String methodName, EValue... inputs) {
    if (destroyed) throw new IllegalStateException("module destroyed");
    if (backend == null) throw new IllegalStateException("no test backend set");
    return backend.execute(modelPath, methodName, inputs);
  }

  public void destroy() {
    destroyed = true;
  }
}
