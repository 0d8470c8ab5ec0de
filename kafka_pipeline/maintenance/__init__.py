"""Table maintenance: what one pass does (compact, checkpoint, vacuum), the loop that runs it beside a
writer, and the deployment policy the writer runs it with."""
