"""The CLI's command modules, one per area, above the library: each has `register(subparsers)` (argparse only at
import time, so `ponderlm --help` loads no torch) and handlers that import the library functions they call."""
