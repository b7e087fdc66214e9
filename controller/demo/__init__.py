"""``make demo``: the pumpkin farm's whole story, run unattended, and its report."""
