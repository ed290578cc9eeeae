"""Sensors: decide when to launch work; they never consume messages themselves."""
