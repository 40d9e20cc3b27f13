import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/**
 * Replays a call script through the JVM Module stand-in (the ExecuTorch C++ Module, loaded with the
 * options the Android AAR uses unless -Det.shareMemoryArenas=true): one Module per .pte, kept for the
 * whole script, methods executed in script order, so state carries across calls exactly as on a phone.
 * Used by tests/test_executorch.py (stock_module). Script lines on stdin:
 * {@code call <pte> <entry> <out-prefix> <n> <f32|i64>:<d0,d1,..>:<raw file> ...}; raw files are
 * little-endian. Each output k goes to {@code <out-prefix>.<k>} and is announced on stdout as
 * {@code out <out-prefix>.<k> <f32|i64> <d0,d1,..>}.
 */
public final class StockModuleReplay {
  public static void main(String[] args) throws IOException {
    Map<String, Module> modules = new HashMap<>();
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line = in.readLine(); line != null; line = in.readLine()) {
      String[] f = line.trim().split(" ");
      if (f.length < 5 || !f[0].equals("call")) throw new IllegalArgumentException("bad script line: " + line);
      Module m = modules.computeIfAbsent(f[1], Module::load);
      int n = Integer.parseInt(f[4]);
      EValue[] inputs = new EValue[n];
      for (int i = 0; i < n; i++) inputs[i] = EValue.from(read(f[5 + i]));
      EValue[] outs = m.execute(f[2], inputs);
      for (int k = 0; k < outs.length; k++) write(f[3] + "." + k, outs[k].toTensor());
    }
    modules.values().forEach(Module::destroy);
  }

  private static Tensor read(String spec) throws IOException {
    String[] p = spec.split(":", 3);
    String[] dims = p[1].isEmpty() ? new String[0] : p[1].split(",");
    long[] shape = new long[dims.length];
    for (int i = 0; i < dims.length; i++) shape[i] = Long.parseLong(dims[i]);
    ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(Path.of(p[2]))).order(ByteOrder.LITTLE_ENDIAN);
    if (p[0].equals("i64")) {
      long[] v = new long[b.remaining() / 8];
      b.asLongBuffer().get(v);
      return Tensor.fromBlob(v, shape);
    }
    float[] v = new float[b.remaining() / 4];
    b.asFloatBuffer().get(v);
    return Tensor.fromBlob(v, shape);
  }

  private static void write(String path, Tensor t) throws IOException {
    boolean longs = t.dtype() == org.pytorch.executorch.DType.INT64;
    long[] lv = longs ? t.getDataAsLongArray() : null;
    float[] fv = longs ? null : t.getDataAsFloatArray();
    ByteBuffer b = ByteBuffer.allocate(longs ? 8 * lv.length : 4 * fv.length).order(ByteOrder.LITTLE_ENDIAN);
    if (longs) b.asLongBuffer().put(lv);
    else b.asFloatBuffer().put(fv);
    Files.write(Path.of(path), b.array());
    StringBuilder dims = new StringBuilder();
    for (long d : t.shape()) dims.append(dims.length() == 0 ? "" : ",").append(d);
    System.out.println("out " + path + " " + (longs ? "i64" : "f32") + " " + dims);
  }
}
