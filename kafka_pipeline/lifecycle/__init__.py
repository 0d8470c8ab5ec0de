"""A process's life: the event loop, running a worker until a signal, stopping child processes."""
