"""One folder per method. Methods share code only through ``transfer.models``, ``adapters`` and ``metrics``, the
contract in ``base.py``, and the source-only baseline (``source_only``: the reference every method builds on or
must beat, e.g. SHOT's source stage)."""
