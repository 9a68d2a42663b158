"""The domain: model, storage, ingest, intervals, actuation. Free of web and protocol libraries."""
