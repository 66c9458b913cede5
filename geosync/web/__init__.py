"""The web layer: REST, node-to-node API, GraphQL, metrics and the admin UI."""
