"""The whole pipeline on one machine: broker, API simulator and workers as child processes."""
