"""Streams: one writer over a sink per carrier, and the framings of each stream kind."""
