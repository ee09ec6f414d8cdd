"""cellwatch's detector: Keras layers, the forecasting model, the scorer and the streaming step.

Score direction, everywhere in cellwatch: a higher score means more anomalous. Raw scores,
anomaly likelihoods (in [0, 1]) and flags all follow it.

This package is pure: it imports numpy and Keras/TensorFlow only, never Kafka, Prometheus or
click, and reads no file or environment variable at import time. Artifact loading and saving
take explicit paths from the caller.
"""
