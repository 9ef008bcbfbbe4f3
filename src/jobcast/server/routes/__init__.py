"""The routes: one module per resource (events, jobs, auth, sockets, service, dashboard)."""
