"""Tests of `editing/`."""
