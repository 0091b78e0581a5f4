"""Participant side of multi-party ECDH-PSI for vertical training: the label holder's rows are the universe.

Three steps, one Flower round each, the coordinator relaying opaque bytes between the label holder
``L`` and every peer ``P``::

    blind    each party shuffles its own ids with a secret permutation and sends k·H(id) in that
             order (L's shuffled order IS the universe order), plus a fresh tag-agreement key
    reblind  L re-blinds every peer's set, P re-blinds L's set; each sends the double-blinded values
             as tags under the key for its outgoing direction and keeps, under the incoming key,
             the tags of the values it computed itself
    match    each compares the tags it received (its own rows, double-blinded by the other side)
             with the tags it kept: L learns which universe rows each peer has, P learns the
             universe position of each of its matched rows

Why shuffled orders: positions leak nothing only if they are random; in sorted order a match
position would tell the other side how many of its ids sort below a matched one. Why tags under
directional keys: the relay sees each double-blinded set under one key only, which it cannot
derive, so it cannot match anything itself.

State between messages (a fresh process may serve each message) lives in the node's run folder,
secrets with mode 0600; nothing here is ever logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from crypto.psi import BlindingKey, TagAgreement, match_tags
from protocols.errors import DuplicateIdentifier, ProtocolViolation
from protocols.uscc import is_valid_uscc

_SECRETS = "psi-secrets.json"
_ARRAYS = "psi.npz"


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def pair_context(domain: str, label_holder: str, peer: str) -> bytes:
    """What both ends of one (label holder, peer) pair bind their tag keys to."""
    return f"{domain}\x00{label_holder}\x00{peer}".encode()


@dataclass
class BlindResult:
    blinded: bytes
    tag_key: bytes


@dataclass(frozen=True)
class Alignment:
    """Outcome of PSI at one node (row numbers of the node's own id list; no ids).

    ``universe``: the label holder's row count. ``own_rows[k]`` sits at universe position
    ``universe_pos[k]``. At the label holder, ``own_rows`` maps universe positions to its own rows
    and ``coverage[peer]`` says which universe rows each peer holds.
    """

    universe: int
    own_rows: np.ndarray
    universe_pos: np.ndarray
    coverage: dict[str, np.ndarray]


class PsiParty:
    """One node's PSI state, kept in ``folder`` between the three messages of a run."""

    def __init__(self, folder: Path, me: str, label_holder: str, domain: str) -> None:
        self.folder = Path(folder)
        self.me = me
        self.label_holder = label_holder
        self.domain = domain

    @property
    def is_label_holder(self) -> bool:
        return self.me == self.label_holder

    # -- step 1 ---------------------------------------------------------------------------------
    def blind(self, ids: Sequence[str], *, rng: np.random.Generator | None = None) -> BlindResult:
        """Validate, shuffle and blind our own ids; remember the permutation and the secrets."""
        n = len(ids)
        if n == 0:
            raise ProtocolViolation(f"{self.me}: no identifiers to align")
        bad = [i for i, code in enumerate(ids) if not is_valid_uscc(code)]
        if bad:
            raise ProtocolViolation(f"{self.me}: {len(bad)} invalid USCC(s) in the PSI input (first at row {bad[0]})")
        if len(set(ids)) != n:
            raise DuplicateIdentifier(f"{self.me}: the PSI input lists an identifier twice")
        rng = rng or np.random.default_rng(int.from_bytes(os.urandom(8), "big"))
        perm = rng.permutation(n)
        key, agreement = BlindingKey.generate(), TagAgreement()
        blinded = key.hash_and_blind([ids[i].encode() for i in perm], self.domain.encode())
        _write_secret(self.folder / _SECRETS, json.dumps(
            {"key": key.export_secret().hex(), "tag": agreement.export_secret().hex()}))
        self._save(perm=perm)
        return BlindResult(blinded=blinded, tag_key=agreement.public_bytes)

    # -- step 2 ---------------------------------------------------------------------------------
    def reblind(self, peers: Sequence[str], peer_blinded: Sequence[bytes], peer_tag_keys: Sequence[bytes]) -> list[bytes]:
        """Re-blind each other party's set; return outgoing tags, keep incoming-key tags."""
        if self.is_label_holder:
            if not peers or len(peers) != len(peer_blinded) or len(peers) != len(peer_tag_keys):
                raise ProtocolViolation(f"{self.me}: reblind needs one blinded set and tag key per peer")
        elif list(peers) != [self.label_holder] or len(peer_blinded) != 1 or len(peer_tag_keys) != 1:
            raise ProtocolViolation(f"{self.me}: a peer re-blinds the label holder's set only")
        key, agreement = self._secrets()
        out, kept = [], {}
        for peer, values, tag_pub in zip(peers, peer_blinded, peer_tag_keys):
            double = key.reblind(bytes(values), what=f"blinded set of {peer}")
            lh, p = (self.me, peer) if self.is_label_holder else (peer, self.me)
            outgoing, incoming = agreement.keys(bytes(tag_pub), pair_context(self.domain, lh, p))
            out.append(outgoing.tag(double))
            kept[f"kept.{peer}"] = np.frombuffer(incoming.tag(double), dtype=np.uint8)
        self._save(peers=np.array(list(peers)), **kept)
        return out

    # -- step 3 ---------------------------------------------------------------------------------
    def match(self, peers: Sequence[str], peer_tags: Sequence[bytes]) -> Alignment:
        """Compare received tags with the kept ones; forget the secrets."""
        arrays = self._load()
        expected = [str(p) for p in arrays.get("peers", np.array([]))]
        if list(peers) != expected or len(peer_tags) != len(expected):
            raise ProtocolViolation(f"{self.me}: match for {list(peers)}, but re-blinded for {expected}")
        perm = arrays["perm"]
        n_own = perm.size
        if self.is_label_holder:
            coverage = {}
            for peer, tags in zip(peers, peer_tags):
                if len(bytes(tags)) != 16 * n_own:
                    raise ProtocolViolation(f"{self.me}: {peer} returned tags for a set of another size")
                mine_at_peer, _ = match_tags(bytes(tags), arrays[f"kept.{peer}"].tobytes())
                present = np.zeros(n_own, dtype=bool)
                present[mine_at_peer] = True
                coverage[peer] = present
            alignment = Alignment(universe=n_own, own_rows=perm.copy(), universe_pos=np.arange(n_own), coverage=coverage)
        else:
            (tags,) = peer_tags
            if len(bytes(tags)) != 16 * n_own:
                raise ProtocolViolation(f"{self.me}: the label holder returned tags for a set of another size")
            kept = arrays[f"kept.{self.label_holder}"].tobytes()
            mine, universe_pos = match_tags(bytes(tags), kept)
            alignment = Alignment(universe=len(kept) // 16, own_rows=perm[mine], universe_pos=universe_pos, coverage={})
        (self.folder / _SECRETS).unlink(missing_ok=True)
        (self.folder / _ARRAYS).unlink(missing_ok=True)
        return alignment

    # -- storage --------------------------------------------------------------------------------
    def _secrets(self) -> tuple[BlindingKey, TagAgreement]:
        try:
            doc = json.loads((self.folder / _SECRETS).read_text())
        except FileNotFoundError:
            raise ProtocolViolation(f"{self.me}: PSI step out of order (no blinding key for this run)") from None
        return BlindingKey.from_secret(bytes.fromhex(doc["key"])), TagAgreement.from_secret(bytes.fromhex(doc["tag"]))

    def _load(self) -> dict[str, np.ndarray]:
        path = self.folder / _ARRAYS
        if not path.exists():
            raise ProtocolViolation(f"{self.me}: PSI step out of order (no state for this run)")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def _save(self, **arrays: np.ndarray) -> None:
        current = self._load() if (self.folder / _ARRAYS).exists() else {}
        current.update(arrays)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{_ARRAYS}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **current)
        os.replace(tmp, self.folder / _ARRAYS)


__all__ = ["Alignment", "BlindResult", "PsiParty", "pair_context"]
