"""One strategy per data type: blobs (files) and git repositories."""
