package org.pytorch.executorch;

/**
 * Stand-in with the signatures of org.pytorch.executorch.Tensor (executorch-android 1.5.1) that the
 * app uses. Holds data in plain arrays so the JVM tests can check the runner's conversions.
 */
public class Tensor {
  private final long[] shape;
  private final DType dtype;
  private final float[] floats;
  private final long[] longs;

  private Tensor(long[] shape, DType dtype, float[] floats, long[] longs) {
    this.shape = shape.clone();
    this.dtype = dtype;
    this.floats = floats;
    this.longs = longs;
  }

  public static Tensor fromBlob(float[] data, long[] shape) {
    return new Tensor(shape, DType.FLOAT, data.clone(), null);
  }

  public static Tensor fromBlob(long[] data, long[] shape) {
    return new Tensor(shape, DType.INT64, null, data.clone());
  }

  public long[] shape() {
    return shape.clone();
  }

  public DType dtype() {
    return dtype;
  }

  public float[] getDataAsFloatArray() {
    if (floats == null) throw new IllegalStateException("Tensor of type " + dtype + " cannot return data as float array.");
    return floats.clone();
  }

  public long[] getDataAsLongArray() {
    if (longs == null) throw new IllegalStateException("Tensor of type " + dtype + " cannot return data as long array.");
    return longs.clone();
  }
}
