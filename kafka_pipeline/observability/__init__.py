"""What an operator watches: logs, Prometheus series, traces, and the ops server that serves them."""
