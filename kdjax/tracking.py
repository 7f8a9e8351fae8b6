"""TensorBoard event files beside a run's metrics.jsonl (optional; see docs/tracking.md)."""
