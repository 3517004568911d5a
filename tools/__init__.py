"""Developer tools: the Ceph lab (``ceph-lab``), the benchmark suite (``python -m tools.bench``)."""
