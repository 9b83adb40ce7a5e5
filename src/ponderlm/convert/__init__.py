"""`ponderlm convert`: official PonderLM-2 / PonderingLM checkpoints and data in and out (see commands.py)."""
