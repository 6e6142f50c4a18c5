"""Datasets: ranked-tag records (records.py), sources that build them, and one DataModule."""
