"""Offline training, synthetic labeled data and evaluation of cellwatch models."""
