"""The run machinery: setup, the loop, run folders, checkpoints, reports, CLI."""
