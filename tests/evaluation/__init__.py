"""Tests of `evaluation/`."""
