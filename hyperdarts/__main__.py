"""``python -m hyperdarts``. DDP relaunches this module on every rank: keep it side-effect free.

``frontier`` and ``compare`` have their own command lines (they run many fits); everything else is
the LightningCLI.
"""

import sys


def run() -> None:
    if sys.argv[1:2] == ["frontier"]:
        from hyperdarts.frontier import main as frontier

        frontier(sys.argv[2:])
    elif sys.argv[1:2] == ["compare"]:
        from hyperdarts.compare import main as compare

        compare(sys.argv[2:])
    else:
        from hyperdarts.cli import main

        main()


if __name__ == "__main__":
    run()
