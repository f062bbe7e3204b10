"""``python -m hyperdarts``. DDP relaunches this module on every rank: keep it side-effect free."""

from hyperdarts.cli import main

if __name__ == "__main__":
    main()
