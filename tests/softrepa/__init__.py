"""Tests of `softrepa/`."""
