"""Leaves with no torch: errors, the atomic write path, options (TrainConfig), fault points for the kill tests."""
