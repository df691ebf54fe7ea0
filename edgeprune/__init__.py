"""edgeprune: prune CNNs until they meet a latency budget measured on the real target runtime.

Heavy backends (ONNX Runtime, OpenVINO, TensorRT) are imported only when a target needs them.
"""
__version__ = "0.1.0"
