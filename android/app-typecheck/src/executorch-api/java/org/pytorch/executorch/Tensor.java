package org.pytorch.executorch;

/** Type-check only: see {@link Module}. */
public abstract class Tensor {
  private Tensor() {}

  public static Tensor fromBlob(float[] data, long[] shape) {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }

  public float[] getDataAsFloatArray() {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }
}
