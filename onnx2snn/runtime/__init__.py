"""Running models: onnxruntime sessions with the operator library registered (sessions), the
in-memory rewrites those sessions run (fusion of a neuron's inputs, onnxruntime's blocked layout,
event-driven convolutions), files written with those rewrites (optimized: `onnx2snn optimize`) and
the other runtimes a converted model runs on (backends)."""
from .backends import RUNTIMES, backend
from .sessions import OPERATORS, library_path, optimize, run_checked, session, session_graph, step

__all__ = ["OPERATORS", "RUNTIMES", "backend", "library_path", "optimize", "run_checked", "session",
           "session_graph", "step"]
