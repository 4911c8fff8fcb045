"""Training and evaluation: engine, optimisers and schedules, metrics, checkpoints/resume, distributed runs."""
