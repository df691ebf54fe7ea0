"""edgeprune: prune CNNs until they meet a latency budget measured on the real target runtime.

Heavy backends (ONNX Runtime, OpenVINO, TensorRT) are imported only when a target needs them.
"""
import os

__version__ = "0.1.0"

# Set before torch loads (edgeprune imports it lazily): OpenMP threads that busy-wait between
# ops would steal the core a latency measurement runs on. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
