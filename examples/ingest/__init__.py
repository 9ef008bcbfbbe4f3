"""File ingest API: JSON or multipart ingestion, status polling and a WebSocket status feed."""
