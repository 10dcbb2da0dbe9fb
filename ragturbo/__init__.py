"""ragturbo: one-step retrieval-augmented text-to-image service (ImageRAGTurbo)."""

__version__ = "0.1.0"
