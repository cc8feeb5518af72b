package org.pytorch.executorch;

/** Not part of ExecuTorch: why these classes throw (see {@link Module}). */
final class ApiSurface {
  static final String MESSAGE =
      "a type-checking stand-in for org.pytorch:executorch-android; the app's Gradle build links the real AAR";

  private ApiSurface() {}
}
