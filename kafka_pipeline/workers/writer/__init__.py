"""The entity writer: entity-rows topic into the Delta tables, exactly once."""
