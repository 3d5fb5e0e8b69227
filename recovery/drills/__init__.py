"""Drills: rebuild a projection in a sandbox and compare it with the live build, row by row."""
