"""Data in files: the records that cross stage boundaries and their JSONL I/O (``records``), files written in resumable chunks (``partial``), oasst1
trees and their IFT examples and ranked groups (``oasst``), evaluation prompt sets and the
AlpacaEval export (``prompt_sets``), self-instruction prompt filters (``prompt_filters``), and the
seed data shipped with srl (``seed_oasst.jsonl``). Imports only ``srl.core`` and ``srl.data``.
"""
