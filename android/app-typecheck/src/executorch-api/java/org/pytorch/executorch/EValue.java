package org.pytorch.executorch;

/** Type-check only: see {@link Module}. */
public class EValue {
  private EValue() {}

  public static EValue from(Tensor tensor) {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }

  public Tensor toTensor() {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }
}
