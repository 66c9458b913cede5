"""Databases: engines, framework tables, tables derived from the catalog, and migrations."""
