"""Synthetic data and traffic: the transaction simulator and the replay of a stream."""
