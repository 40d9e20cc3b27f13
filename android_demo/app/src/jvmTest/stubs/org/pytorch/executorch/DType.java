package org.pytorch.executorch;

/** Stand-in for the AAR's DType (subset), for compiling the runner on a JVM without the AAR. */
public enum DType {
  UINT8, INT8, INT16, INT32, INT64, HALF, FLOAT, DOUBLE, BOOL
}
