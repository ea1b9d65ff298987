"""Evaluation: metrics (numpy only), threshold choice, plots and error galleries."""
