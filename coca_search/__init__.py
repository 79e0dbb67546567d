"""The `coca-search` console command: flags are parsed here and nowhere else."""
