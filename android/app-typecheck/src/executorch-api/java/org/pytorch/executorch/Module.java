package org.pytorch.executorch;

/**
 * Type-check only: the signatures of org.pytorch:executorch-android 1.4.1's Module that the app calls, written from
 * that release's public API (extension/android/executorch_android/src/main/java/org/pytorch/executorch at tag v1.4.1),
 * because the AAR cannot be fetched where this check runs. Never packaged: the app's Gradle build uses the real AAR.
 */
public class Module {
  private Module() {}

  public static Module load(final String modelPath) {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }

  public EValue[] forward(EValue... inputs) {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }

  public void destroy() {
    throw new UnsupportedOperationException(ApiSurface.MESSAGE);
  }
}
