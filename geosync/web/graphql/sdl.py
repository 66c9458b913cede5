"""`python -m geosync.web.graphql.sdl MODULE`: print the GraphQL schema of the replicators in
MODULE (SDL), as docs/graphql/schema.graphql holds it for the demo application."""

from __future__ import annotations

import sys

from geosync.catalog import Catalog
from geosync.web.graphql.schema import schema_sdl


def main(argv: list[str]) -> int:
    """Print the SDL of the catalog named by `argv[0]` (default: the demo's replicators)."""
    module = argv[0] if argv else "geosync.demo.replicators"
    sys.stdout.write(schema_sdl(Catalog.from_module(module)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
