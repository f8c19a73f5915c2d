"""Training: the one LightningModule that wraps any method, optimisers, schedules, runs."""
