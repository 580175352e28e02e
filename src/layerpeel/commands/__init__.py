"""Sub-commands of the `layerpeel` command line, one module each."""
