"""The DARTS search space: operations, cells, networks and genotypes."""
