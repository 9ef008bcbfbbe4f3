"""Sermon transcription service: the API v2 events stream and videos API on jobcast."""
