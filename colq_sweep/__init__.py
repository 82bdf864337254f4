"""colq_sweep: declarative quantization sweeps for ColQwen3 retrievers (AutoRound -> MTEB ViDoRe -> MLflow -> report)."""

__version__ = "0.1.0"
