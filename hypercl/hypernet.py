"""The chunked, task-conditioned hypernetwork of von Oswald et al. (ICLR 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from hypercl.layout import WeightLayout


@dataclass(frozen=True)
class HyperNetConfig:
    """Architecture and initialisation of a :class:`ChunkedHyperNetwork`.

    Args:
        hidden: hidden layer sizes of the MLP; ``()`` makes it a linear map.
        activation: activation class applied after every hidden layer.
        chunk_size: outputs per chunk. ``None`` picks the largest chunk that keeps the
            hypernetwork no larger than the weights it generates (the paper's
            "compressive regime").
        task_emb_dim: size of each task embedding.
        chunk_emb_dim: size of each learned chunk embedding.
        init: ``"variance"`` (default) rescales every layer so its output has unit
            variance for N(0, 1) embeddings, then maps each generated tensor onto the
            scale of the target's own initialisation (``W = mean + std * h``, a fixed
            per-tensor affine map; see :class:`ChunkedHyperNetwork`). ``"xavier"`` is
            the paper's init: Xavier-uniform weights, zero biases, no output map.
    """

    hidden: tuple[int, ...] = (10, 10)
    activation: type[nn.Module] = nn.ReLU
    chunk_size: int | None = None
    task_emb_dim: int = 96
    chunk_emb_dim: int = 96
    init: Literal["variance", "xavier"] = "variance"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}.")
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise ValueError(
                f"chunk_size must be a positive number of outputs per chunk (or None to "
                f"choose it from the target's size), got {self.chunk_size}."
            )
        for field in ("task_emb_dim", "chunk_emb_dim"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}.")
        if not (isinstance(self.activation, type) and issubclass(self.activation, nn.Module)):
            raise ValueError(
                f"activation must be an nn.Module class such as nn.ReLU (not an instance "
                f"or a function), got {self.activation!r}."
            )
        if self.init not in ("variance", "xavier"):
            raise ValueError(f"init must be 'variance' or 'xavier', got {self.init!r}.")

    def n_params(self, n_weights: int, chunk_size: int) -> int:
        """Parameters of the hypernetwork (chunk embeddings included, task embeddings not)."""
        dims = (*self.hidden, chunk_size)
        n = (self.task_emb_dim + self.chunk_emb_dim + 1) * dims[0]
        n += sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
        return n + math.ceil(n_weights / chunk_size) * self.chunk_emb_dim

    def auto_chunk_size(self, n_weights: int) -> int:
        """Largest chunk size whose hypernetwork has at most ``n_weights`` parameters.

        Where no chunk size is that small (tiny targets), the one with the fewest
        parameters.
        """
        slope = (self.hidden[-1] if self.hidden else self.task_emb_dim + self.chunk_emb_dim) + 1
        lo = max(1, min(n_weights, round(math.sqrt(n_weights * self.chunk_emb_dim / slope))))
        if self.n_params(n_weights, lo) > n_weights:
            return lo
        hi = n_weights
        while lo < hi:  # n_params grows with the chunk size beyond ``lo``
            mid = (lo + hi + 1) // 2
            if self.n_params(n_weights, mid) <= n_weights:
                lo = mid
            else:
                hi = mid - 1
        return lo


class ChunkedHyperNetwork(nn.Module):
    """Maps task embeddings to the flat weight vector of a target network.

    Chunk ``i`` of the output is ``MLP([e, c_i])``: the task embedding ``e`` joined
    with a learned chunk embedding ``c_i``. All chunks of all requested tasks go
    through the MLP in one batched pass; the surplus of the last chunk is dropped.
    The first layer is split into a task part and a chunk part, so the chunk part is
    computed once per call however many tasks are requested.

    With ``init="variance"``, the raw output ``h`` (unit variance at init) is mapped
    to ``mean + std * h`` per generated tensor, where ``std`` is the spread of the
    target's own initial values for that tensor and ``mean`` is their value where
    they are constant (biases at zero, norm scales at one), times a per-chunk gain that
    evens out the chunks' spread at init. A chunk may straddle tensors of different
    scale, so this fixed map, not the chunk embeddings, is what lets every generated
    tensor start at its usual scale.

    Args:
        layout: the generated parameters' names and shapes.
        config: architecture and initialisation.
        reference: the target's initial values, keyed like ``layout.names``; used
            by ``init="variance"`` for the per-tensor scale.
    """

    def __init__(
        self,
        layout: WeightLayout,
        config: HyperNetConfig = HyperNetConfig(),
        *,
        reference: dict[str, Tensor] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.layout = layout
        self.config = config
        self.n_weights = layout.n_weights
        self.chunk_size = config.chunk_size or config.auto_chunk_size(self.n_weights)
        self.n_chunks = math.ceil(self.n_weights / self.chunk_size)
        dims = (*config.hidden, self.chunk_size)

        self.chunk_embs = nn.Parameter(torch.randn(self.n_chunks, config.chunk_emb_dim, **factory))
        self.task_in = nn.Linear(config.task_emb_dim, dims[0], bias=False, **factory)
        self.chunk_in = nn.Linear(config.chunk_emb_dim, dims[0], **factory)
        pairs = list(zip(dims[:-1], dims[1:]))
        self.layers = nn.ModuleList(
            (WideLinear if i == len(pairs) - 1 else nn.Linear)(a, b, **factory) for i, (a, b) in enumerate(pairs)
        )
        self.act = config.activation()

        self.scaled = config.init == "variance"
        scale, shift = _output_map(layout, reference if self.scaled else None)
        self.register_buffer("out_scale", scale.to(**factory))
        self.register_buffer("out_shift", shift.to(**factory))
        if self.scaled:
            self._init_unit_variance()
        else:
            self._init_xavier()

    def forward(self, task_embs: Tensor, *, features: bool = False) -> Tensor:
        """Flat target weights for a batch of task embeddings.

        Args:
            task_embs: ``(T, task_emb_dim)``.
            features: return the input of the last (linear) layer instead, ``(T, K, H)``;
                the weights are ``layers[-1]`` of it, flattened, cut and mapped.

        Returns:
            ``(T, n_weights)``, row ``t`` the weights for ``task_embs[t]``.
        """
        chunk = self.chunk_in(self.chunk_embs)                # (K, H0)
        h = self.task_in(task_embs)[:, None] + chunk[None]    # (T, K, H0)
        for layer in self.layers[:-1]:
            h = layer(self.act(h))                            # (T, K, H_i)
        if features:
            if not self.layers:
                raise ValueError("A hypernetwork without hidden layers has no features before its last layer.")
            return self.act(h)
        if self.layers:
            h = self.layers[-1](self.act(h))                  # (T, K, C)
        flat = h.flatten(1)[:, : self.n_weights]              # (T, P)
        if self.scaled:
            flat = torch.addcmul(self.out_shift, flat, self.out_scale)
        return flat

    def output_weights(self) -> Tensor:
        """Per chunk and output unit, the squared scale of the weight it becomes (the output
        map's ``std**2``; 0 for the surplus of the last chunk): ``(K, C)``."""
        w = self.out_scale.new_zeros(self.n_chunks * self.chunk_size)
        w[: self.n_weights] = self.out_scale.square()
        return w.view(self.n_chunks, self.chunk_size)

    def generate(self, task_emb: Tensor) -> dict[str, Tensor]:
        """Weights for one task embedding ``(task_emb_dim,)``, keyed by parameter name."""
        return self.layout.unflatten(self(task_emb[None])[0])

    def extra_repr(self) -> str:
        return f"n_weights={self.n_weights}, chunk_size={self.chunk_size}, n_chunks={self.n_chunks}"

    @torch.no_grad()
    def _init_unit_variance(self, n_probe: int = 16) -> None:
        """Zero biases, then rescale each layer so its output has unit variance.

        The embeddings are N(0, 1), so a probe batch of N(0, 1) task embeddings sees
        the same input statistics as training will; measuring instead of deriving
        makes the rule hold for any activation.
        """
        linears = [self.task_in, self.chunk_in, *self.layers]
        for lin in linears:
            if lin.bias is not None:
                lin.bias.zero_()
        ref = self.chunk_embs
        probe = torch.randn(n_probe, self.task_in.in_features, device=ref.device, dtype=ref.dtype)
        h = self.task_in(probe)[:, None] + self.chunk_in(self.chunk_embs)[None]
        gain = h.std()
        self.task_in.weight.div_(gain)
        self.chunk_in.weight.div_(gain)
        h = h / gain
        for layer in self.layers:
            h = layer(self.act(h))
            gain = h.std()
            layer.weight.div_(gain)
            h = h / gain
        # Each chunk's output is a mix of a few hidden features whose norm depends on
        # its chunk embedding, so chunks differ in spread by tens of percent; fold a
        # fixed per-chunk gain into the output map to even them out.
        per_chunk = h.transpose(0, 1).flatten(1).std(dim=1)  # (K,)
        gains = per_chunk.reciprocal().repeat_interleave(self.chunk_size)
        self.out_scale.mul_(gains[: self.n_weights])

    @torch.no_grad()
    def _init_xavier(self) -> None:
        # The paper's init treats [e, c] -> H0 as one layer, so its fan-in is E + C.
        fan_in = self.task_in.in_features + self.chunk_in.in_features
        bound = math.sqrt(6.0 / (fan_in + self.task_in.out_features))
        for lin in (self.task_in, self.chunk_in):
            lin.weight.uniform_(-bound, bound)
        self.chunk_in.bias.zero_()
        for layer in self.layers:
            if isinstance(layer, WideLinear):  # the same draws as for an nn.Linear's weight
                layer.weight.copy_(nn.init.xavier_uniform_(layer.weight.new_empty(layer.weight.T.shape)).T)
            else:
                nn.init.xavier_uniform_(layer.weight)
            layer.bias.zero_()


class WideLinear(nn.Module):
    """``nn.Linear`` with its weight stored transposed, ``(in_features, out_features)``.

    The hypernetwork's last layer maps a few features to a chunk of thousands of weights. With
    the weight kept "wide", every product that touches it (forward, both gradients, the
    factored regulariser's Gram matrices) has the long dimension along contiguous rows, which
    CPU BLAS runs 4-10 times faster than the tall layout (``benchmarks/speed.py``); GPUs do not
    mind either way. Initialised with the same draws as ``nn.Linear(in, out)``; a state dict
    saved from an ``nn.Linear`` (older checkpoints) loads transposed.
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        ref = nn.Linear(in_features, out_features, device=device, dtype=dtype)  # its init, its draws
        self.weight = nn.Parameter(ref.weight.detach().T.contiguous())
        self.bias = nn.Parameter(ref.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        flat = torch.addmm(self.bias, x.reshape(-1, self.in_features), self.weight)  # (N, out)
        return flat.view(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        w = state_dict.get(prefix + "weight")
        if w is not None and w.shape == (self.out_features, self.in_features) != tuple(self.weight.shape):
            state_dict[prefix + "weight"] = w.T.contiguous()  # saved by an nn.Linear
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (weight stored transposed)"


def _output_map(layout: WeightLayout, reference: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Per-weight ``(scale, shift)`` that put unit-variance outputs on the target's init scale.

    A randomly initialised tensor gets its own spread as scale and no shift. A
    constant one (zero biases, norm scales at one) gets its value as shift and the
    scale of the nearest random tensor before it (after it if there is none), so the
    hypernetwork can still move it on that layer's scale.
    """
    if reference is None:
        return torch.ones(layout.n_weights), torch.zeros(layout.n_weights)
    stds: list[float | None] = []
    shifts: list[float] = []
    for name in layout.names:
        t = reference[name].detach().float()
        spread = t.std(correction=0).item() if t.numel() > 1 else 0.0
        stds.append(spread if spread > 0 else None)
        shifts.append(0.0 if spread > 0 else t.flatten()[0].item())
    known = [s for s in stds if s is not None]
    fallback = known[0] if known else 1.0
    filled = []
    for s in stds:
        fallback = s if s is not None else fallback
        filled.append(fallback)
    numels = torch.tensor(layout.numels)
    scale = torch.repeat_interleave(torch.tensor(filled), numels)
    shift = torch.repeat_interleave(torch.tensor(shifts), numels)
    return scale, shift
