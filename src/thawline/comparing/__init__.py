"""Several runs and predictions about them: the comparison (seeds, halving, model grid, shift test), the Optuna
sweep, and the advisor's frozen-feature probes."""
