"""Device profiles, latency measurement and predictors (see the latency issue)."""

__all__: list[str] = []
