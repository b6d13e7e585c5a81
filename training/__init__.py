"""Simulation of training data, training, evaluation and engine export for sbd-stream."""
