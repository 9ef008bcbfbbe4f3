"""HTTP plumbing: errors, body limits, CORS and CSRF, request ids, credentials, uploads."""
