"""Reference servers the benchmark compares jobcast against, in the same run."""
