"""Evaluation of frozen encoders: cached features, faiss kNN, linear probe, reports."""
