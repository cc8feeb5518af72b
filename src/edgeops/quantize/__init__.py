"""INT8 quantization (`pt2e`: PTQ and QAT) and lowering to XNNPACK (`lowering`), shared by export and LOSO."""
