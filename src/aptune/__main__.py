"""`python -m aptune` is the `aptune` command (the benchmark launches its jobs this way)."""

from .cli import main

main()
