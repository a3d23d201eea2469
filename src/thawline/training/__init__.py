"""One training run: strategies as data, data and model preparation, batch sources, the loop, the run's steps,
the LR range test, checkpoints, the run folder, tracking, process settings and DDP."""
