"""The measurement agent: an HTTP service on a board that measures ONNX models with the board's
own targets, so the ``remote`` target (``edgeprune.runtime.remote``) can drive it from a build
machine. ``protocol`` (pydantic only) is shared with the client; ``app``, ``jobs`` and ``serve``
import FastAPI and uvicorn (``pip install 'edgeprune[remote]'``) and only the agent loads them."""
