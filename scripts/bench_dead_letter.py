"""What dead-lettering a hostile record costs: a value that decompressed to VALUE_MB of zeros (a
gzip bomb) and a KEY_MB key, through the one envelope every worker builds (`dead_letter_for`,
`to_bytes`). Prints the envelope sizes, whether each fits the DLQ limit, and the seconds taken;
run it under `farm-bench` for the process's peak memory (before/after: point PYTHONPATH at an
older checkout of kafka_pipeline).

    farm-bench --vs 'env PYTHONPATH=/tmp/kp-old python scripts/bench_dead_letter.py' -- python scripts/bench_dead_letter.py
"""

from __future__ import annotations

import os
import time

from kafka_pipeline.dead_letters import envelope as dead_letter
from kafka_pipeline.dead_letters.envelope import MAX_DLQ_MESSAGE_BYTES, RecordView, dead_letter_for

VALUE_MB = int(os.environ.get("VALUE_MB", "100"))
KEY_MB = int(os.environ.get("KEY_MB", "1"))


def letter_size(key: bytes, value: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    letter = dead_letter_for(RecordView("claimx.events", 0, 1, key, value, [], 1_767_225_600_000), error_type="MalformedEvent",
                             error_message="not JSON", category="permanent", worker="bench")
    size = len(letter.to_bytes())
    return size, time.perf_counter() - started


def main() -> None:
    bomb_size, bomb_s = letter_size(b"k", bytes(VALUE_MB * 1_000_000))
    key = b"K" * (KEY_MB * 1_000_000)
    key_size, key_s = letter_size(key, b"{bad")
    print(f"value {VALUE_MB} MB: envelope {bomb_size} bytes, fits {bomb_size <= MAX_DLQ_MESSAGE_BYTES}, {bomb_s:.2f} s")
    # the DLQ record carries a key too: the original one before issue 21, `dlq_key` (bounded) since
    record_key = getattr(dead_letter, "dlq_key", lambda k: k)(key)
    message = key_size + len(record_key)
    print(f"key {KEY_MB} MB: DLQ message (key + envelope) {message} bytes, fits {message <= MAX_DLQ_MESSAGE_BYTES}, {key_s:.2f} s")


if __name__ == "__main__":
    main()
