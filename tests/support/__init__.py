"""Shared test helpers (not collected): factories, promotion factories, the GitHub stand-in, the three merge styles,
a user training module."""
