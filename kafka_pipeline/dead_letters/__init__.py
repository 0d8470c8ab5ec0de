"""Dead letters: the envelope a letter carries, the sink every worker sends through, where a failed
message goes next (routing), and records that cannot be decoded at all."""
