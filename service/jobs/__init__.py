"""Jobs: the state machine, the queries (repository), the use cases (service) and the API shapes (schemas)."""
