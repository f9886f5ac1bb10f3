"""SuperTransformer: the largest SubTransformer of a space, run for any subnet by front-slicing.

Every weight of a subnet is the front block `W[:rows, :cols]` of the super weight with the
same name, so one generic rule slices them all and gradients flow into the shared weights.
The subnet is always an explicit argument: nothing about the "current" subnet is stored.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet._model import Cache, EncoderOut, ModelConfig, SubTransformer, init_weights


class _Call(nn.Module):
    """Lets `functional_call` reach methods other than `forward` (encode, decode_step)."""

    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.model, method)(*args)


@functools.lru_cache(maxsize=256)
def _template(cfg: SubnetConfig, mc: ModelConfig) -> _Call:
    # Built on the meta device: a structure without storage; real weights come per call.
    with torch.device("meta"):
        return _Call(SubTransformer(cfg, mc))


class SubnetView:
    """A subnet of a SuperTransformer with the same methods as a `SubTransformer`.

    Holds views of the super weights (taken once), so it follows later weight updates
    but not later changes of the super model's train/eval mode.
    """

    def __init__(self, supernet: SuperTransformer, cfg: SubnetConfig):
        self.cfg, self.mc = cfg, supernet.mc
        self._training = supernet.training
        self._params = supernet.sliced_parameters(cfg, prefix="model.")

    def _call(self, method: str, *args: Any) -> Any:
        template = _template(self.cfg, self.mc)
        template.train(self._training)
        return functional_call(template, self._params, (method, *args))

    def __call__(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self._call("forward", src, tgt_in)

    def encode(self, src: Tensor) -> EncoderOut:
        return self._call("encode", src)

    def decode_step(self, prev: Tensor, enc: EncoderOut, cache: Cache | None) -> tuple[Tensor, Cache]:
        return self._call("decode_step", prev, enc, cache)


class SuperTransformer(nn.Module):
    """Weight-sharing supernet over a `SearchSpace`; `forward(src, tgt_in, cfg)` runs subnet `cfg`."""

    def __init__(self, space: SearchSpace, mc: ModelConfig):
        super().__init__()
        if mc.qkv_dim != space.qkv_dim:
            raise ValueError(f"model qkv_dim {mc.qkv_dim} differs from space '{space.name}' ({space.qkv_dim})")
        self.space, self.mc = space, mc
        self.model = SubTransformer(space.largest(), mc)
        init_weights(self.model, mc.pad_id)

    def sliced_parameters(self, cfg: SubnetConfig, prefix: str = "") -> dict[str, Tensor]:
        """Views `W[:r, :c]` of the super weights, named and shaped as `SubTransformer(cfg)`'s."""
        self.space.validate(cfg)
        full = dict(self.model.named_parameters())
        template = _template(cfg, self.mc).model
        return {prefix + name: full[name][tuple(slice(0, n) for n in p.shape)]
                for name, p in template.named_parameters()}

    def subnet(self, cfg: SubnetConfig) -> SubnetView:
        """The subnet as a model object (`encode`, `decode_step`, call) sharing these weights."""
        return SubnetView(self, cfg)

    def forward(self, src: Tensor, tgt_in: Tensor, cfg: SubnetConfig) -> Tensor:
        """Teacher-forced logits of subnet `cfg`: src (B, S), tgt_in (B, T) -> (B, T, V)."""
        return self.subnet(cfg)(src, tgt_in)

    def extract_subnet(self, cfg: SubnetConfig) -> SubTransformer:
        """A standalone `SubTransformer` holding copies of the subnet's weights."""
        model = SubTransformer(cfg, self.mc)
        with torch.no_grad():
            model.load_state_dict({k: v.detach().clone() for k, v in self.sliced_parameters(cfg).items()})
        return model.train(self.training)
