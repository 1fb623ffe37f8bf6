"""One folder per method; methods share code only through ``transfer.models/adapters/metrics``."""
