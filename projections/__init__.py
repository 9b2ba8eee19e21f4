"""Read side: pure folds of the ledger event stream, each with its own checkpoint."""

__all__: list[str] = []
