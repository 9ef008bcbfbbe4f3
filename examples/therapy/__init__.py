"""Therapy session processing: status over SSE and WebSocket, with patient/therapist rules."""
