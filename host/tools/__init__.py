"""Tools around the sites: the demo and the benchmarks."""
