"""``python -m isolane.cli ARGS`` runs ``isolane ARGS``; ``python -m isolane.cli run-isolated ARGS``
runs ``run-isolated ARGS`` (``isolane run`` is the same command)."""

from __future__ import annotations

import sys

from isolane.cli.app import main

__all__: list[str] = []


def _dispatch(argv: list[str]) -> None:
    if argv[:1] == ["run-isolated"]:
        from isolane.cli.run import run_isolated_main

        run_isolated_main(argv[1:])
    main(argv)


if __name__ == "__main__":
    _dispatch(sys.argv[1:])
