"""Tasks: each builds its data, model head and metric, then runs the one training loop."""
