"""TVM-compiled kernels for standalone SubTransformers (see the latency issue)."""

__all__: list[str] = []
