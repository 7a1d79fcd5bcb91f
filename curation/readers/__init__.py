"""One module per source format; each exposes read_<format>(paths, options) -> IngestResult."""
