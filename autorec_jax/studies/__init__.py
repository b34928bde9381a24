"""Studies over many runs: protocols, sweeps, ensembles, statistics, plots."""
