"""The ledger: RFC 9162 Merkle tree over the log, and C2SP signed checkpoints.

>>> from rlhf_audit_kit.ledger import merkle
>>> merkle.root([]).hex()[:8]
'e3b0c442'
"""
from __future__ import annotations

from . import checkpoint, merkle, tree
from .checkpoint import (Checkpoint, Signer, Verifier, open_note, sign_checkpoint,
                         verify_checkpoint, vkey_string)
from .merkle import (consistency_proof, inclusion_proof, leaf_hash, node_hash, root,
                     root_from_leaf_hashes, verify_consistency, verify_inclusion)
from .tree import RightEdge, TreeReader, new_complete_nodes, new_complete_nodes_by_level

__all__ = [
    "merkle", "tree", "checkpoint",
    "leaf_hash", "node_hash", "root", "root_from_leaf_hashes", "inclusion_proof",
    "verify_inclusion", "consistency_proof", "verify_consistency",
    "new_complete_nodes", "new_complete_nodes_by_level", "RightEdge", "TreeReader",
    "Checkpoint", "Signer", "Verifier", "vkey_string", "open_note", "verify_checkpoint",
    "sign_checkpoint",
]
