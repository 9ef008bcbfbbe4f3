"""Serving: the fast entrance, jobcast's uvicorn protocol, and ``jobcast serve``'s assembly."""
