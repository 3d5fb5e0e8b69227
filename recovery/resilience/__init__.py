"""Failure policies as values, and what they use: back-off, circuit breaker, throttle."""
