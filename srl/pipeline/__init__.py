"""The run directory: stage order and the loop (``loop``), what stages share (``context``), one file
per stage kind (``stages/``), the manifest and reuse across runs (``manifest``), what each stage's
fingerprint covers (``fingerprints``) and metrics/W&B (``tracking``). May import every other folder;
only the entry points (``srl.run``, ``srl.evaluate``, ``srl.prepare_data``, ``srl.compare``) import it.
"""
