"""Tests of `shapes/`."""
