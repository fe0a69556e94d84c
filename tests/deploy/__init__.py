"""Packaging and deployment tests: the wheel outside the checkout, the images' requirement sets."""
