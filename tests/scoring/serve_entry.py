"""``python -m tests.scoring.serve_entry ARGS``: the serve CLI, with the data stand-in where needed."""

import importlib.util
import sys

if importlib.util.find_spec("megatron_polar.data.format") is None:  # data branch not merged yet
    from tests.scoring import standin_data

    standin_data.install()

from megatron_polar.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
