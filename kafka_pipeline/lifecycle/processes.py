"""Child processes of the pipeline's own (broker, simulator, workers): stop them for sure."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen[bytes], timeout_s: float, sig: int = signal.SIGTERM) -> int:
    """Send `sig` (a graceful stop), wait up to `timeout_s`, then SIGKILL: no orphan survives."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
