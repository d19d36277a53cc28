"""Features layer: execution, intake and job lifecycle decisions, written against contracts."""
