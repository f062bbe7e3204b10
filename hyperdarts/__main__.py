"""``python -m hyperdarts``. DDP relaunches this module on every rank: keep it side-effect free.

``frontier`` has its own command line (it runs many fits); everything else is the LightningCLI.
"""

import sys


def run() -> None:
    if sys.argv[1:2] == ["frontier"]:
        from hyperdarts.frontier import main as frontier

        frontier(sys.argv[2:])
    else:
        from hyperdarts.cli import main

        main()


if __name__ == "__main__":
    run()
