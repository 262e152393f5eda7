"""Training batches from one or several domain groups of stores.

One group (plain `stores`): the group's stores are zipped by sample id and streamed; an epoch is one pass.
Several groups (`groups`, DUNE's teacher-balanced batches): every batch holds batch_size/G samples of each group.
The group with the most batches (the primary) defines the epoch; the others restart their own (reshuffled)
epochs whenever they run out, as DUNE indexes its smaller groups modulo their length. Each group's position
(epoch, batch) is part of the training position, so resume replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from distillkit_schemas import paths

from distillkit.training.dune.config import TrainConfig
from distillkit.store.reader import ShardStream, StoreSource, make_loader


@dataclass
class Group:
    name: str
    sources: list[StoreSource]
    own_teacher: str | None
    stream: ShardStream
    teachers: list[str] = field(default_factory=list)


def _open(urls: list[str], wanted: list[str] | None, storage_options: dict, verify: bool = True,
          decode: str = "full", on_device: bool = True) -> list[StoreSource]:
    out = []
    for url in urls:
        probe = StoreSource(url, None, storage_options, verify, on_device=on_device)
        names = probe.teachers if wanted is None else [t for t in probe.teachers if t in wanted]
        if names:
            out.append(probe if names == probe.teachers and decode == "full"
                       else StoreSource(url, names, storage_options, verify, decode, on_device))
    return out


def build_groups(cfg: TrainConfig, rank: int, world: int) -> list[Group]:
    specs = [(g.name, g.stores, g.teacher) for g in cfg.groups] if cfg.groups else [("all", cfg.stores, None)]
    sizes = [cfg.batch_size // len(specs) + (i < cfg.batch_size % len(specs)) for i in range(len(specs))]
    groups = []
    for i, ((name, urls, own), bs) in enumerate(zip(specs, sizes)):
        sources = _open(urls, cfg.teachers, cfg.storage_options, cfg.verify_checksums, cfg.decode,
                        cfg.decode_on == "device")
        if not sources:
            raise ValueError(f"group {name!r}: no selected teacher in stores {urls}")
        stream = ShardStream(sources, bs, "train", cfg.seed + 1000 * i, True, cfg.shuffle_shards, rank, world)
        stream.num_workers = max(cfg.num_workers, 1)
        teachers = [t for s in sources for t in s.teachers]
        if own is not None and own not in teachers:
            raise ValueError(f"group {name!r}: its teacher {own!r} is not in its stores ({teachers})")
        groups.append(Group(name, sources, own, stream, teachers))
    first = groups[0].sources[0].manifest
    for g in groups:
        for s in g.sources:
            if (s.manifest.image_hw, s.manifest.student_patch) != (first.image_hw, first.student_patch):
                raise ValueError(f"store {s.url} was cached for a different student input than "
                                 f"{groups[0].sources[0].url}")
    return groups


@dataclass
class Teachers:
    """The teachers a run distils, across its groups' stores: each one's target shape (embed_dim, grid_hw), whether
    it has a CLS target, the store whose statistics normalise it, and each group's own teacher."""

    dims: dict[str, tuple[int, tuple[int, int]]]
    has_cls: dict[str, bool]
    sources: dict[str, StoreSource]
    own: dict[str, str | None]  # group name -> its own teacher

    @property
    def names(self) -> list[str]:
        return sorted(self.dims)


def teachers_of(cfg: TrainConfig, groups: list[Group]) -> Teachers:
    """The run's `Teachers`; a teacher cached with different shapes in two stores, or an asked-for teacher in none,
    fails."""
    provenance: dict[str, tuple[Any, StoreSource]] = {}
    for g in groups:
        for src in g.sources:
            for t, p in src.provenance.items():
                seen = provenance.setdefault(t, (p, src))[0]
                if (seen.embed_dim, tuple(seen.grid_hw)) != (p.embed_dim, tuple(p.grid_hw)):
                    raise ValueError(f"teacher {t} has different shapes in {src.url} and another store")
    if cfg.teachers is not None and set(cfg.teachers) - set(provenance):
        raise ValueError(f"teachers {sorted(set(cfg.teachers) - set(provenance))} are in none of the stores "
                         f"{cfg.all_stores()}")
    sources = {t: src for t, (_, src) in provenance.items()}
    for g in groups:  # a teacher's statistics come from its own group's store when there is one
        if g.own_teacher in g.teachers:
            sources[g.own_teacher] = next(s for s in g.sources if g.own_teacher in s.teachers)
    return Teachers({t: (p.embed_dim, tuple(p.grid_hw)) for t, (p, _) in provenance.items()},
                    {t: getattr(p, "has_cls", True) for t, (p, _) in provenance.items()}, sources,
                    {g.name: g.own_teacher for g in groups})


def val_streams(cfg: TrainConfig, groups: list[Group]) -> list[tuple[ShardStream, list[str]]]:
    out = []
    for g in groups:
        s = ShardStream(g.sources, cfg.batch_size, "val", shuffle=False, max_samples=cfg.max_eval_samples,
                        rank=0, world=1)
        if not s.n_usable:  # no held-out split in this store: the first training samples stand in
            s = ShardStream(g.sources, cfg.batch_size, "train", shuffle=False, max_samples=cfg.max_eval_samples,
                            rank=0, world=1)
        out.append((s, g.teachers))
    return out


class GroupBatches:
    """Yields one combined batch per round (None when this rank's primary group ran out and no other group
    exists: the rank then only joins the gradient exchange)."""

    def __init__(self, groups: list[Group], num_workers: int, epoch: int, batch: int,
                 others: dict[str, list[int]], pin: bool = False):
        self.groups, self.num_workers, self.pin = groups, num_workers, pin
        self.primary = max(range(len(groups)), key=lambda i: groups[i].stream.batches_per_epoch(0))
        self.pos = {g.name: list(others.get(g.name, [0, 0])) for g in groups}
        self.pos[groups[self.primary].name] = [epoch, batch]
        self.iters: dict[str, Iterator | None] = {g.name: None for g in groups}

    def state(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.pos.items() if k != self.groups[self.primary].name}

    def _next(self, i: int) -> dict[str, Any] | None:
        g = self.groups[i]
        for _ in range(2):
            if self.iters[g.name] is None:
                epoch, batch = self.pos[g.name]
                mine = g.stream.batches_per_epoch(epoch)
                self.iters[g.name] = iter(make_loader(g.stream, self.num_workers, epoch, min(batch, mine), self.pin))
            item = next(self.iters[g.name], None)
            if item is not None:
                self.pos[g.name][1] += 1
                return item
            if i == self.primary:
                return None
            self.pos[g.name] = [self.pos[g.name][0] + 1, 0]  # a secondary group starts its next epoch
            self.iters[g.name] = None
        return None

    def next_round(self) -> dict[str, Any] | None:
        parts = [(g, self._next(i)) for i, g in enumerate(self.groups)]
        parts = [(g, b) for g, b in parts if b is not None]
        return combine(parts) if parts else None


def combine(parts: list[tuple[Group, dict[str, Any]]]) -> dict[str, Any]:
    """Concatenate group sub-batches; a teacher missing in a group gets zeros and `available` False."""
    teachers = sorted({t for g, _ in parts for t in g.teachers})
    out: dict[str, Any] = {"ids": [i for _, b in parts for i in b["ids"]],
                           "groups": [g.name for g, b in parts for _ in b["ids"]],
                           "samples/image": torch.cat([b["samples/image"] for _, b in parts]), "available": {}}
    for t in teachers:
        ref = next(b for g, b in parts if t in g.teachers)
        for kind in ("patch", "cls"):
            key = paths.target(t, kind)
            out[key] = torch.cat([b[key] if t in g.teachers else
                                  torch.zeros((len(b["ids"]), *ref[key].shape[1:]), dtype=ref[key].dtype)
                                  for g, b in parts])
        out["available"][t] = torch.cat([torch.full((len(b["ids"]),), t in g.teachers) for g, b in parts])
    return out
