"""A toy ponderlm method plugin: `echo` (see `ponder_echo.method`)."""
