"""Latency predictors: HAT's MLP baseline and a layer-additive model, behind one interface.

Both learn from measured records (subnet, encoder ms, decoder-step ms) of one device and
predict the end-to-end latency `encoder + steps x decoder_step` of unmeasured subnets.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import itertools
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.stats import kendalltau, spearmanr

from hwnas.search_spaces import SearchSpace, SubnetConfig

# A layerwise feature column: an operator family and its shape, e.g. ("embed", e), ("ffn", e, f), ("cross", d, h, a).
_Column = tuple[str, int] | tuple[str, int, int] | tuple[str, int, int, int]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One measured subnet: medians of its raw runs."""

    subnet: SubnetConfig
    encoder_ms: float
    decoder_step_ms: float
    decode_steps: int

    @property
    def latency_ms(self) -> float:
        return self.encoder_ms + self.decode_steps * self.decoder_step_ms


class LatencyPredictor(abc.ABC):
    """Fit on samples of one device and space; predict end-to-end latency in ms.

    A fitted predictor is immutable and safe to share between threads; `fit` returns a new one.
    """

    kind: ClassVar[str]

    def __init__(self, space: SearchSpace, decode_steps: int):
        self.space, self.decode_steps = space, decode_steps

    @abc.abstractmethod
    def fit(self, samples: Sequence[Sample], *, seed: int = 0) -> LatencyPredictor: ...

    @abc.abstractmethod
    def predict(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted latency in ms, one per subnet."""

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        # Any values: with a plain ndarray dict mypy fears a key could be savez's `allow_pickle` flag
        arrays: dict[str, Any] = {k: v for k, v in self._state().items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in self._state().items() if not isinstance(v, np.ndarray)}
        header = {"kind": self.kind, "space": self.space.to_dict(), "decode_steps": self.decode_steps, **meta}
        np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @staticmethod
    def from_bytes(blob: bytes) -> LatencyPredictor:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            header = json.loads(bytes(data["__header__"]).decode())
            arrays = {k: data[k] for k in data.files if k != "__header__"}
        cls = PREDICTORS[header.pop("kind")]
        pred = cls(SearchSpace.from_dict(header.pop("space")), header.pop("decode_steps"))
        pred._load_state({**header, **arrays})
        return pred


def hat_features(cfg: SubnetConfig) -> np.ndarray:
    """HAT's 10 layer-averaged features (utils.get_config_features), arbitrary attention as 1..3."""
    return np.array([
        cfg.encoder_embed_dim, cfg.encoder_layer_num, np.mean(cfg.encoder_ffn_embed_dim),
        np.mean(cfg.encoder_self_attention_heads), cfg.decoder_embed_dim, cfg.decoder_layer_num,
        np.mean(cfg.decoder_ffn_embed_dim), np.mean(cfg.decoder_self_attention_heads),
        np.mean(cfg.decoder_ende_attention_heads), np.mean(cfg.decoder_arbitrary_ende_attn),
    ], dtype=np.float64)


class HatMLPPredictor(LatencyPredictor):
    """HAT's baseline: MLP 10 -> 400 x 3 -> 1 on normalized layer-averaged features, MSE on latency."""

    kind = "hat-mlp"

    def __init__(self, space: SearchSpace, decode_steps: int, *, steps: int = 5000, lr: float = 1e-3,
                 hidden: int = 400, layers: int = 3):
        super().__init__(space, decode_steps)
        self.steps, self.lr, self.hidden, self.layers = steps, lr, hidden, layers
        self._weights: list[np.ndarray] = []
        self._feature_norm = np.ones(10)
        self._latency_norm = 1.0

    def _net(self) -> Any:
        import torch

        dims = [10] + [self.hidden] * self.layers
        mods: list[Any] = []
        for a, b in itertools.pairwise(dims):
            mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*mods, torch.nn.Linear(self.hidden, 1))

    def fit(self, samples: Sequence[Sample], *, seed: int = 0) -> HatMLPPredictor:
        import torch

        out = HatMLPPredictor(self.space, self.decode_steps, steps=self.steps, lr=self.lr, hidden=self.hidden,
                              layers=self.layers)
        x = np.stack([hat_features(s.subnet) for s in samples])
        y = np.array([s.latency_ms for s in samples])
        out._feature_norm = np.maximum(np.abs(x).max(axis=0), 1e-9)  # HAT hand-copies these; we store them
        out._latency_norm = float(np.abs(y).max())
        torch.manual_seed(seed)
        net = out._net()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        xt = torch.tensor(x / out._feature_norm, dtype=torch.float32)
        yt = torch.tensor(y / out._latency_norm, dtype=torch.float32)[:, None]
        g = torch.Generator().manual_seed(seed)
        for _ in range(self.steps):
            idx = torch.randint(0, len(xt), (min(128, len(xt)),), generator=g)
            loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out._weights = [p.detach().numpy().astype(np.float64) for p in net.parameters()]
        return out

    def predict(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        if not self._weights:
            raise ValueError("predictor is not fitted")
        for cfg in subnets:  # a subnet outside the space it learned is an error, not an extrapolation
            self.space.validate(cfg)
        h = np.stack([hat_features(c) for c in subnets]) / self._feature_norm
        for i in range(0, len(self._weights), 2):  # numpy forward: no torch needed to predict
            h = h @ self._weights[i].T + self._weights[i + 1]
            if i + 2 < len(self._weights):
                h = np.maximum(h, 0.0)
        return h[:, 0] * self._latency_norm

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"w{i}": w for i, w in enumerate(self._weights)}
        return {**state, "feature_norm": self._feature_norm, "latency_norm": self._latency_norm,
                "steps": self.steps, "lr": self.lr, "hidden": self.hidden, "layers": self.layers}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.steps, self.lr, self.hidden, self.layers = state["steps"], state["lr"], state["hidden"], state["layers"]
        self._feature_norm, self._latency_norm = state["feature_norm"], float(state["latency_norm"])
        self._weights = [state[f"w{i}"] for i in range(2 * (self.layers + 1))]


class LayerwisePredictor(LatencyPredictor):
    """Ours: latency is a sum over layers of per-operator-family costs, fitted on the measured parts.

    encoder_ms = c[e] + sum over encoder layers of ffn[e, f_i] + attn[e, h_i]
                 + sum over decoder layers of kv[e, a_j];
    decoder_step_ms = c[d] + sum over layers of ffn[d, f_i] + self_attn[d, h_i] + cross_attn[d, eh_i, a_i].
    The encoder graph also projects every decoder layer's cross-attention keys and values from
    its last a_j encoder states (`kernels._graphs.EncoderGraph`), hence the kv terms
    (`features=2`; version 1 lacked them and stays loadable). Each coefficient is one
    operator-shape family (a tuned kernel), so a few dozen parameters explain the space and a
    few hundred samples fit it; weighted least squares minimizes relative error.
    """

    kind = "layerwise"
    FEATURES = 2  # the feature set new fits use; stored with each predictor

    def __init__(self, space: SearchSpace, decode_steps: int, *, ridge: float = 1e-6, features: int = FEATURES):
        super().__init__(space, decode_steps)
        self.ridge = ridge
        self._set_columns(features)
        self._enc_coef = np.zeros(0)
        self._dec_coef = np.zeros(0)

    def _set_columns(self, features: int) -> None:
        if features not in (1, 2):
            raise ValueError(f"layerwise feature set {features} is unknown (1 or 2)")
        s, self.features = self.space, features
        self._enc_cols: list[_Column] = [("embed", e) for e in s.encoder_embed_dim]
        self._enc_cols += [("ffn", e, f) for e in s.encoder_embed_dim for f in s.encoder_ffn_embed_dim]
        self._enc_cols += [("attn", e, h) for e in s.encoder_embed_dim for h in s.encoder_self_attention_heads]
        if features >= 2:
            self._enc_cols += [("kv", e, a) for e in s.encoder_embed_dim for a in s.decoder_arbitrary_ende_attn]
        self._dec_cols: list[_Column] = [("embed", d) for d in s.decoder_embed_dim]
        self._dec_cols += [("ffn", d, f) for d in s.decoder_embed_dim for f in s.decoder_ffn_embed_dim]
        self._dec_cols += [("self", d, h) for d in s.decoder_embed_dim for h in s.decoder_self_attention_heads]
        self._dec_cols += [("cross", d, h, a) for d in s.decoder_embed_dim for h in s.decoder_ende_attention_heads
                           for a in s.decoder_arbitrary_ende_attn]
        self._enc_index = {c: i for i, c in enumerate(self._enc_cols)}
        self._dec_index = {c: i for i, c in enumerate(self._dec_cols)}

    def _enc_x(self, cfg: SubnetConfig) -> np.ndarray:
        x, e, idx = np.zeros(len(self._enc_cols)), cfg.encoder_embed_dim, self._enc_index
        x[idx[("embed", e)]] = 1.0
        for f, h in zip(cfg.encoder_ffn_embed_dim, cfg.encoder_self_attention_heads, strict=True):
            x[idx[("ffn", e, f)]] += 1.0
            x[idx[("attn", e, h)]] += 1.0
        if self.features >= 2:
            for a in cfg.decoder_arbitrary_ende_attn:
                x[idx[("kv", e, a)]] += 1.0
        return x

    def _dec_x(self, cfg: SubnetConfig) -> np.ndarray:
        x, d, idx = np.zeros(len(self._dec_cols)), cfg.decoder_embed_dim, self._dec_index
        x[idx[("embed", d)]] = 1.0
        layers = zip(cfg.decoder_ffn_embed_dim, cfg.decoder_self_attention_heads, cfg.decoder_ende_attention_heads,
                     cfg.decoder_arbitrary_ende_attn, strict=True)
        for f, h, eh, a in layers:
            x[idx[("ffn", d, f)]] += 1.0
            x[idx[("self", d, h)]] += 1.0
            x[idx[("cross", d, eh, a)]] += 1.0
        return x

    def _solve(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Relative least squares (each sample weighted by 1/y, so the fit minimizes percentage error) with
        # costs held non-negative: a kernel cannot take negative time, and unconstrained fits on few or
        # noisy samples did predict negative latencies (which then "met" any budget).
        from scipy.optimize import nnls

        w = 1.0 / np.maximum(y, 1e-9)
        xw, yw = x * w[:, None], y * w
        a = np.vstack([xw, np.sqrt(self.ridge) * np.eye(x.shape[1])])
        b = np.concatenate([yw, np.zeros(x.shape[1])])
        return nnls(a, b, maxiter=50 * x.shape[1])[0]

    def fit(self, samples: Sequence[Sample], *, seed: int = 0) -> LayerwisePredictor:
        out = LayerwisePredictor(self.space, self.decode_steps, ridge=self.ridge, features=self.features)
        out._enc_coef = out._solve(np.stack([out._enc_x(s.subnet) for s in samples]),
                                   np.array([s.encoder_ms for s in samples]))
        out._dec_coef = out._solve(np.stack([out._dec_x(s.subnet) for s in samples]),
                                   np.array([s.decoder_step_ms for s in samples]))
        return out

    def predict_parts(self, subnets: Sequence[SubnetConfig]) -> tuple[np.ndarray, np.ndarray]:
        if not len(self._enc_coef):
            raise ValueError("predictor is not fitted")
        for cfg in subnets:
            self.space.validate(cfg)
        enc = np.stack([self._enc_x(c) for c in subnets]) @ self._enc_coef
        dec = np.stack([self._dec_x(c) for c in subnets]) @ self._dec_coef
        return enc, dec

    def predict(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        enc, dec = self.predict_parts(subnets)
        return enc + self.decode_steps * dec

    def _state(self) -> dict[str, Any]:
        return {"enc_coef": self._enc_coef, "dec_coef": self._dec_coef, "ridge": self.ridge, "features": self.features}

    def _load_state(self, state: dict[str, Any]) -> None:
        # Predictors saved before `features` existed used set 1; the columns follow the stored set.
        self._set_columns(int(state.get("features", 1)))
        self._enc_coef, self._dec_coef, self.ridge = state["enc_coef"], state["dec_coef"], float(state["ridge"])


PREDICTORS: dict[str, type[LatencyPredictor]] = {c.kind: c for c in (HatMLPPredictor, LayerwisePredictor)}


def create_predictor(kind: str, space: SearchSpace, decode_steps: int) -> LatencyPredictor:
    if kind not in PREDICTORS:
        raise ValueError(f"Unknown predictor: {kind} (known: {', '.join(PREDICTORS)})")
    return PREDICTORS[kind](space, decode_steps)


def accuracy(predicted: np.ndarray, measured: np.ndarray, *, constraint_ms: float | None = None) -> dict[str, float]:
    """Held-out report: RMSE, MAPE, share within +-5% / +-10%, rank correlations, error near a constraint."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (predicted - measured) / measured
    out = {
        "n": float(len(measured)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mape": float(np.mean(np.abs(rel))),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "spearman": float(spearmanr(predicted, measured).statistic) if len(measured) > 2 else float("nan"),
        "kendall": float(kendalltau(predicted, measured).statistic) if len(measured) > 2 else float("nan"),
    }
    if constraint_ms is not None:
        near = np.abs(measured - constraint_ms) <= 0.1 * constraint_ms
        out["constraint_ms"] = constraint_ms
        out["near_constraint_n"] = float(near.sum())
        out["near_constraint_mape"] = float(np.mean(np.abs(rel[near]))) if near.any() else float("nan")
    return out
