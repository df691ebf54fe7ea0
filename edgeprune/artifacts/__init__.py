"""Device artifacts: ONNX export, the artifact kinds, precisions and INT8 quantization.
"""
