"""The HTTP API: app factory, dependencies, routes and the error mapping."""
