"""Operations: metrics, logs, signals, the collector, state shared across processes."""
