"""Infrastructure every other folder may use, importing nothing of srl outside ``core``.

``distributed`` (ranks, rank-0 writes, sharded generation), ``rundir`` (writes confined to the run
dir, checksums, config stamps of half-finished work), ``hashing`` (seeds derived from names, config
fingerprints), ``progress`` (progress bars and the per-chunk hook of generation stages).
"""
