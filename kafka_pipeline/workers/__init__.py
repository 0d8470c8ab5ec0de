"""The three workers, side by side: enrich (events in, entity rows out), writer (entity rows into
the Delta tables), retry (delayed retries sent back when due). Each runs on the runtime."""
