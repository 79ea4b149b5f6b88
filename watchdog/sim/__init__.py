"""The simulated provider, its chaos and the demo."""
