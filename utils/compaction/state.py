"""How the compact network holds one tensor of the dense network.

Every channel of a dense tensor is, in the compact network, one of:

* *computed*: a channel of the narrow tensor the compact network really computes (``ids``
  lists their dense indices in the narrow tensor's order, which need not be sorted);
* *uniform*: the same value at every pixel and every sample (``value``, float64) — a pruned
  filter's BN output, and what channel-wise ops make of it;
* *a map*: a value per pixel that depends on the image size only, not on the data (``maps``):
  a conv whose zero padding lets the border pixels see less of a constant;
* *scaled*: a uniform value times a per-sample factor (``scaled``): a uniform channel that a
  squeeze-excitation scale multiplies. It stays a product until a conv without padding or a
  linear layer takes it in as a per-sample bias.

``pending`` is a data-independent map still to be added to the computed channels (a conv's
border correction, deferred so that a residual add can take it with its own constants).
A tensor that ops across channel groups compute at full width (``fullwidth``) is held as it
is in the dense network (``Full``).
"""
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Ref:
    """Where the spatial size of a tensor can be read: a data node of the compact graph, and
    the spatial ops (conv windows, pools, slices) between it and the tensor."""
    node: str
    replay: tuple = ()

    def then(self, op: tuple) -> "Ref":
        return Ref(self.node, self.replay + (op,))


@dataclass(frozen=True)
class Maps:
    ids: torch.Tensor  # dense indices of the map channels
    expr: str          # const node giving (1, len(ids), h, w), or (1, len(ids)) for features


@dataclass(frozen=True)
class Scaled:
    ids: torch.Tensor    # dense indices
    value: torch.Tensor  # float64, one per id
    source: str          # data node of the per-sample factors: (N, C_s, 1, 1) or (N, C_s)
    pos: torch.Tensor    # each id's channel in that node


@dataclass(frozen=True)
class T:
    width: int              # dense channels (features, for a 2-D tensor)
    ids: torch.Tensor       # computed channels, in the narrow tensor's order
    node: str | None        # data node of the narrow tensor (None: nothing computed)
    value: torch.Tensor     # (width,) float64: the uniform channels' values (0 elsewhere)
    ref: Ref
    spatial: bool = True    # (N, C, H, W); False: (N, F)
    maps: Maps | None = None
    scaled: Scaled | None = None
    pending: str | None = None  # const node (1, len(ids), …) to add to the computed channels

    @staticmethod
    def uniform(value: torch.Tensor, ref: Ref, spatial: bool = True) -> "T":
        return T(len(value), empty(), None, value, ref, spatial)

    def but(self, **changes) -> "T":
        return replace(self, **changes)

    def mask(self, ids) -> torch.Tensor:
        m = torch.zeros(self.width, dtype=torch.bool)
        if ids is not None and len(ids):
            m[ids] = True
        return m

    @property
    def map_ids(self) -> torch.Tensor:
        return self.maps.ids if self.maps is not None else empty()

    @property
    def scaled_ids(self) -> torch.Tensor:
        return self.scaled.ids if self.scaled is not None else empty()

    def uniform_mask(self) -> torch.Tensor:
        """The channels that are neither computed, maps nor scaled; made once per state (every
        op that reads the state asks; no caller changes it in place)."""
        cached = self.__dict__.get("_uniform_mask")
        if cached is None:
            cached = ~(self.mask(self.ids) | self.mask(self.map_ids) | self.mask(self.scaled_ids))
            object.__setattr__(self, "_uniform_mask", cached)  # frozen: not a field
        return cached


@dataclass(frozen=True)
class ChannelView:
    """A view that splits the channel dim in several (a channel shuffle's middle step):
    ``index`` holds, per position of those dims, the channel of ``base``."""
    base: T
    index: torch.Tensor


@dataclass(frozen=True)
class Full:
    """A tensor the compact network holds exactly as the dense network does, every channel, in
    any shape (``fullwidth``: a split attention's 5-D views and its softmax across the split)."""
    node: str
    shape: tuple  # the dense shape at the traced size
    # its dims may hold the image's height and width in another layout than (…, H, W) (a
    # part kept whole's tokens, (N, H·W, C)): a reshape that fixed them would fit the traced
    # size only
    sized: bool = False

    def as_t(self) -> T:
        """As a tensor of computed channels: (N, C, H, W) or (N, F) only."""
        width = self.shape[1]
        return T(width, torch.arange(width), self.node, torch.zeros(width, dtype=torch.float64),
                 Ref(self.node), spatial=len(self.shape) == 4)


def empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)


def positions(sub: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Where each of ``sub``'s ids sits in ``order`` (every id of ``sub`` is in ``order``)."""
    where = torch.full((int(order.max()) + 1 if len(order) else 1,), -1, dtype=torch.long)
    where[order] = torch.arange(len(order))
    pos = where[sub]
    assert bool((pos >= 0).all()), "internal: ids outside the order"
    return pos


def member(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ids (in their order) that ``mask`` marks."""
    return ids[mask[ids]] if len(ids) else ids


def run_start(pos: torch.Tensor) -> int:
    """The first position when ``pos`` is a run of consecutive positions, else -1."""
    if len(pos) and bool((pos.diff() == 1).all()):
        return int(pos[0])
    return -1
