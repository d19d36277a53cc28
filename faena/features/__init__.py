"""Features layer: execution, retries, time limits and result recording, written against contracts."""
