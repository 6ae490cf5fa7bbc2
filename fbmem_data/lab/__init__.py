"""The memorization lab: a synthetic data set with planted memorization, a small SD-shaped model, its segmenter."""
