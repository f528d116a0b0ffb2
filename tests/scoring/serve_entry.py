"""``python -m tests.scoring.serve_entry ARGS``: the serve CLI, importable from the repository root."""

import sys

from megatron_polar.serve import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
