"""An exact DeepSHAP engine for sequential PyTorch models, many times faster than shap's.

It computes what `shap.DeepExplainer` computes for PyTorch: DeepLIFT's rescale rule against
each background sample, averaged over the background, with shap's rules for every module
(ReLU and other element-wise nonlinearities, max-pool, softmax; conv, linear, batch norm in
eval mode and average pools as linear maps), including shap's cut-offs for near-zero input
differences. It gets there with less work:

- background activations (and max-pool choices) are computed once per background set;
- each explained image is forwarded once, not once per background sample;
- the multipliers of each nonlinearity depend only on the (image, background) pair, so they
  are computed once and shared by every class; nothing is backpropagated through the
  background half;
- all classes travel together in the batch dimension of one backward pass, made of explicit
  vector-Jacobian products (no autograd graph, no hooks);
- images and background are processed in chunks, so memory stays bounded.

Models must be `nn.Sequential` (nested is fine) of the modules in `RULES`; anything else is
refused with `UnsupportedModelError` naming the module, never explained approximately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NONLINEAR_EPS = 1e-6  # shap: below this |x - b|, element-wise rules fall back to the gradient at b
MAXPOOL_EPS = 1e-7  # shap: below this |x - b|, max-pool multipliers are zero
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SELU, nn.GELU)
PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


class UnsupportedModelError(ValueError):
    """The model holds a module (or a structure) the engine has no exact rule for."""


@dataclass
class _Layer:
    name: str  # dotted path inside the model, for error messages
    module: nn.Module
    kind: str  # linear | elementwise | maxpool | softmax | passthrough
    in_shape: tuple[int, ...] = ()  # per-sample input shape
    out_shape: tuple[int, ...] = ()


def _flatten(model: nn.Module, prefix: str = "") -> list[_Layer]:
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            f"the fast DeepSHAP engine needs an nn.Sequential model; {prefix or 'the model'} is "
            f"{type(model).__name__} with its own forward(): use shap's DeepExplainer (--shap-engine shap)"
        )
    layers = []
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            layers += _flatten(child, path)
        else:
            layers.append(_Layer(path, child, _kind(child, path)))
    return layers


def _kind(module: nn.Module, path: str) -> str:
    def refuse(why: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"module {path} ({module!r}) is not supported by the fast DeepSHAP engine: "
                                     f"{why}; use shap's DeepExplainer (--shap-engine shap)")

    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.padding_mode != "zeros":
            raise refuse("only zero padding is linear")
        return "linear"
    if isinstance(module, (nn.Linear, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d)):
        return "linear"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "linear"
    if isinstance(module, nn.AvgPool2d):
        if module.padding not in (0, (0, 0)) or module.ceil_mode:
            raise refuse("average pooling with padding or ceil_mode")
        return "linear"
    if isinstance(module, PASSTHROUGH):
        return "passthrough"
    if isinstance(module, ELEMENTWISE):
        return "elementwise"
    if isinstance(module, nn.MaxPool2d):
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        if kernel != stride or _pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) or module.ceil_mode:
            raise refuse("max-pool windows must not overlap (kernel == stride, no padding, dilation or ceil_mode)")
        return "maxpool"
    if isinstance(module, nn.Softmax):
        if module.dim not in (1, -1):
            raise refuse("softmax must be over the feature dimension (dim=1)")
        return "softmax"
    raise refuse("no DeepLIFT rule for this module type")


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample shape in the engine's layout: images (C, H, W) are kept channels-last, (H, W, C)."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def _to_hwc(t: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) to a contiguous (..., H, W, C): oneDNN's convolutions run about twice as fast on it here."""
    return t.movedim(-3, -1).contiguous()


def _from_hwc(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W, C) viewed as (..., C, H, W) (a channels-last tensor, no copy)."""
    return t.movedim(-1, -3)


def _layout(t: torch.Tensor, per_sample_dims: int) -> torch.Tensor:
    """A batch (or batch of batches) of activations in the engine's layout."""
    return _to_hwc(t) if per_sample_dims == 3 else t


def _linear_vjp(layer: _Layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transpose of a linear layer, mapping output gradients (rows, *_hwc(out_shape)) to the input's."""
    module = layer.module
    if isinstance(module, nn.Conv2d):
        return _conv2d_vjp(layer)
    if isinstance(module, nn.Conv1d):
        return lambda g: torch.nn.grad.conv1d_input((g.shape[0], *layer.in_shape), module.weight, g, module.stride,
                                                    module.padding, module.dilation, module.groups)
    if isinstance(module, nn.Conv3d):
        return lambda g: torch.nn.grad.conv3d_input((g.shape[0], *layer.in_shape), module.weight, g, module.stride,
                                                    module.padding, module.dilation, module.groups)
    if isinstance(module, nn.Linear):
        return lambda g: g @ module.weight
    if isinstance(module, nn.Flatten):
        return lambda g: _to_hwc(g.reshape(g.shape[0], *layer.in_shape)) if len(layer.in_shape) == 3 \
            else g.reshape(g.shape[0], *layer.in_shape)
    if isinstance(module, nn.BatchNorm2d):
        scale = _batchnorm_scale(layer)  # channels are the last dimension in the channels-last layout
        return lambda g: g * scale
    if isinstance(module, nn.BatchNorm1d):
        scale = _batchnorm_scale(layer).reshape((1, -1) + (1,) * (len(layer.in_shape) - 1))
        return lambda g: g * scale
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _avgpool_vjp(layer)
    raise AssertionError(f"no VJP for {layer.name}")  # _kind admitted it: a bug here


def _batchnorm_scale(layer: _Layer) -> torch.Tensor:
    """Per-channel slope of a batch norm in eval mode: weight / sqrt(running_var + eps)."""
    module = layer.module
    if module.training or module.running_var is None:
        raise UnsupportedModelError(f"batch norm {layer.name} must be in eval mode with running statistics")
    scale = torch.rsqrt(module.running_var + module.eps)
    return (scale * module.weight if module.weight is not None else scale).detach()


def _backward_steps(layers: list[_Layer]) -> dict[int, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The transpose of every linear layer; a batch norm right after a convolution is folded into it (None)."""
    steps: dict[int, Callable | None] = {}
    for i, layer in enumerate(layers):
        if layer.kind != "linear" or i in steps:
            continue
        following = layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(layer.module, nn.Conv2d) and following is not None
                and isinstance(following.module, nn.BatchNorm2d)):
            steps[i] = _conv2d_vjp(layer, _batchnorm_scale(following))
            steps[i + 1] = None
        else:
            steps[i] = _linear_vjp(layer)
    return steps


def _conv2d_vjp(layer: _Layer, out_scale: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transpose of a 2-D convolution: a transposed convolution with the same weight.

    `out_scale` (per output channel) folds a following batch norm's transpose into the weight.
    (Faster here than torch.nn.grad.conv2d_input, as it runs oneDNN's channels-last kernels.)
    """
    module = layer.module
    weight = module.weight.detach() if out_scale is None else module.weight.detach() * out_scale.reshape(-1, 1, 1, 1)
    (_, h, w), (_, oh, ow) = layer.in_shape, layer.out_shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(module.stride), _pair(module.padding), _pair(module.dilation)
    kh, kw = module.kernel_size
    if isinstance(module.padding, str):
        raise UnsupportedModelError(f"{layer.name}: string padding {module.padding!r}; use explicit padding")
    # Rows/columns the forward pass never reached need output_padding to restore the input size.
    extra = (h - ((oh - 1) * sh - 2 * ph + dh * (kh - 1) + 1), w - ((ow - 1) * sw - 2 * pw + dw * (kw - 1) + 1))
    return lambda g: _to_hwc(F.conv_transpose2d(_from_hwc(g), weight, None, (sh, sw), (ph, pw), extra,
                                                module.groups, (dh, dw)))


def _avgpool_vjp(layer: _Layer) -> Callable[[torch.Tensor], torch.Tensor]:
    (_, h, w), (_, oh, ow) = layer.in_shape, layer.out_shape
    module = layer.module
    if isinstance(module, nn.AdaptiveAvgPool2d):
        if h % oh or w % ow:
            raise UnsupportedModelError(f"{layer.name}: adaptive average pool from {h}x{w} to {oh}x{ow} has "
                                        "uneven windows; use shap's DeepExplainer (--shap-engine shap)")
        (kh, kw), (sh, sw) = (h // oh, w // ow), (h // oh, w // ow)
    else:
        (kh, kw), (sh, sw) = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    if (kh, kw) == (h, w):  # global pool; g is (rows, 1, 1, C)
        return lambda g: (g / (h * w)).expand(-1, h, w, -1).contiguous()

    def vjp(g: torch.Tensor) -> torch.Tensor:
        # The transpose of average pooling: each output spreads 1/(kh*kw) over its window.
        g = _from_hwc(g)
        c = g.shape[1]
        ones = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=g.dtype, device=g.device)
        up = F.conv_transpose2d(g, ones, stride=(sh, sw), groups=c)
        return _to_hwc(F.pad(up, (0, w - up.shape[-1], 0, h - up.shape[-2])))

    return vjp


class DeepShapEngine:
    """DeepSHAP values of a sequential model's outputs, equal to shap.DeepExplainer's.

    background: (n_background, *input_shape) tensor on the device the work should run on.
    max_rows: the largest batch of the backward pass (classes x images x background samples);
    memory is about rows x the largest activation x 4 bytes x 4. The CPU default keeps the
    working set near the L3 cache (measured best here); GPUs want large batches.
    """

    CPU_ROWS, CUDA_ROWS = 400, 16384

    def __init__(self, model: nn.Module, background: torch.Tensor, max_rows: int | None = None):
        self.layers = _flatten(model)
        self.model = model.eval()
        self.background = background.detach()
        self.max_rows = max_rows or (self.CUDA_ROWS if self.background.is_cuda else self.CPU_ROWS)
        with torch.no_grad():
            bg_in, bg_out = self._forward(self.background)
        output = bg_out[-1]
        if output.ndim != 2:
            raise UnsupportedModelError(f"the model's output must be (batch, classes), got {tuple(output.shape)}")
        for layer in self.layers:
            if layer.kind == "softmax" and len(layer.in_shape) != 1:
                raise UnsupportedModelError(f"softmax {layer.name} must act on (batch, features), got {layer.in_shape}")
        self.n_outputs = output.shape[1]
        self.expected_value = output.mean(0)  # (K,)
        self._steps = _backward_steps(self.layers)
        self._buffers: dict[tuple, torch.Tensor] = {}
        # Per nonlinear layer, what its rule needs of the background, computed once.
        self._bg = {i: self._prepare(i, bg_in[i], bg_out[i]) for i, layer in enumerate(self.layers)
                    if layer.kind in ("elementwise", "maxpool", "softmax")}

    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each layer's input and output for a batch; records per-sample shapes."""
        inputs, outputs = [], []
        for layer in self.layers:
            inputs.append(x)
            x = layer.module(x)
            outputs.append(x)
            layer.in_shape, layer.out_shape = tuple(inputs[-1].shape[1:]), tuple(x.shape[1:])
        return inputs, outputs

    def _prepare(self, i: int, inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """What layer i's rule needs of a batch: inputs and outputs (in the engine's layout), and
        for element-wise layers the slope (shap's fallback where x and b nearly agree), for max-pools
        the argmax of every window."""
        layer = self.layers[i]
        dims = len(layer.in_shape)
        prepared = {"in": _layout(inputs, dims), "out": _layout(outputs, len(layer.out_shape))}
        if layer.kind == "elementwise":
            leaf = inputs.clone().requires_grad_(True)
            with torch.enable_grad():
                (slope,) = torch.autograd.grad(layer.module(leaf).sum(), leaf)
            prepared["slope"] = _layout(slope, dims)
        elif layer.kind == "maxpool":
            module = layer.module
            prepared["in_nchw"], prepared["out_nchw"] = inputs, outputs
            prepared["argmax"] = F.max_pool2d(inputs, module.kernel_size, module.stride, return_indices=True)[1]
        return prepared

    @torch.no_grad()
    def shap_values(self, images: torch.Tensor) -> np.ndarray:
        """SHAP values, (n_images, n_outputs, *input_shape), float32, as shap.DeepExplainer's."""
        images = images.detach().to(self.background.device)
        n_bg, k = len(self.background), self.n_outputs
        per_pass = max(1, self.max_rows // k)  # (image, background) pairs per backward pass
        bg_chunk = min(n_bg, per_pass)
        img_chunk = max(1, per_pass // bg_chunk)
        dims = images.ndim - 1
        out = np.empty((len(images), k, *images.shape[1:]), dtype=np.float32)
        for start in range(0, len(images), img_chunk):
            x = images[start : start + img_chunk]
            x_in, x_out = self._forward(x)
            prepared = {i: self._prepare(i, x_in[i], x_out[i]) for i in self._bg}
            total = torch.zeros((k, len(x), *_hwc(x.shape[1:])), dtype=torch.float64, device=x.device)
            for b0 in range(0, n_bg, bg_chunk):
                total += self._pairs(x, prepared, slice(b0, b0 + bg_chunk))
            total = (total / n_bg).transpose(0, 1)
            out[start : start + len(x)] = (_from_hwc(total) if dims == 3 else total).float().cpu().numpy()
        return out

    def _pairs(self, x: torch.Tensor, prepared: dict, bg: slice) -> torch.Tensor:
        """Sum over a background chunk of multiplier x (x - b): (K, n_images, *_hwc(input_shape))."""
        k, n_x = self.n_outputs, len(x)
        b = self.background[bg]
        pairs = n_x * len(b)
        # Multipliers depend on the (image, background) pair only: computed once, shared by all classes.
        rules = {i: self._rule(i, prepared[i], bg) for i in self._bg}
        # Gradient rows are (class, image, background sample); start from one-hot output gradients.
        g = torch.eye(k, dtype=x.dtype, device=x.device)[:, None, :].expand(k, pairs, k).reshape(k * pairs, k)
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if layer.kind == "linear":
                if self._steps[i] is not None:  # None: folded into the layer before it
                    g = self._steps[i](g)
            elif layer.kind != "passthrough":
                g = rules[i](g.view(k, pairs, *_hwc(layer.out_shape))).reshape(k * pairs, *_hwc(layer.in_shape))
        dims = x.ndim - 1
        x_l, b_l = _layout(x, dims), _layout(b, dims)
        g = g.view(k, n_x, len(b), *x_l.shape[1:])
        return (g * (x_l[:, None] - b_l[None])[None]).sum(2, dtype=torch.float64)

    def _rule(self, i: int, xp: dict, bg: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backward rule of nonlinear layer i for one chunk of pairs: (K, pairs, *out) to (K, pairs, *in)."""
        layer = self.layers[i]
        bp = {name: value[bg] for name, value in self._bg[i].items()}
        n_x, n_b = len(xp["in"]), len(bp["in"])
        if layer.kind == "maxpool":
            return self._maxpool_rule(layer, xp, bp)
        delta_in = (xp["in"][:, None] - bp["in"][None]).reshape(n_x * n_b, *xp["in"].shape[1:])
        delta_out = (xp["out"][:, None] - bp["out"][None]).reshape(n_x * n_b, *xp["out"].shape[1:])
        small = delta_in.abs() < NONLINEAR_EPS
        ratio = delta_out / torch.where(small, 1.0, delta_in)
        if layer.kind == "elementwise":
            # Rescale: (f(x) - f(b)) / (x - b); where x and b nearly agree, the slope at b.
            slope = bp["slope"][None].expand(n_x, *bp["slope"].shape).reshape(delta_in.shape)
            multiplier = torch.where(small, slope, ratio)
            return lambda g: g.mul_(multiplier[None])  # g is always a fresh tensor of the backward pass
        # Softmax: element-wise rescale; the softmax Jacobian at b where the logit barely moves.
        # (shap's rule, kept for equal values. It is not additive there: class k's probability can
        # move because other logits moved while z_k did not, and that change is then lost; measured
        # up to ~4e-4 on one image in 640, for shap and this engine alike, in float64 too.)
        if not small.any():
            return lambda g: g * ratio[None]
        s = bp["out"][None].expand(n_x, *bp["out"].shape).reshape(delta_in.shape)[None]
        return lambda g: torch.where(small[None], s * (g - (g * s).sum(-1, keepdim=True)), g * ratio[None])

    def _buffer(self, layer: _Layer, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A reused output buffer: fresh large allocations cost page faults that dominate a multiply."""
        key = (layer.name, shape)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return self._buffers[key]

    def _maxpool_rule(self, layer: _Layer, xp: dict, bp: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        """shap's max-pool rule: the output difference goes to the image's and the background's argmax.

        Per pair, each input position gets weight (its share of the window's output difference) / (x - b);
        the backward pass is then each output gradient spread over its window, times that weight.
        """
        kh, kw = _pair(layer.module.kernel_size)
        c, h, w = layer.in_shape
        _, oh, ow = layer.out_shape
        yx, yb = xp["out_nchw"], bp["out_nchw"]
        cross = torch.maximum(yx[:, None], yb[None])  # (n_x, n_b, C, oh, ow)
        pairs = cross.shape[0] * cross.shape[1]
        flat = (pairs, c, oh, ow)
        to_x = F.max_unpool2d((cross - yb[None]).reshape(flat), xp["argmax"][:, None].expand_as(cross).reshape(flat),
                              (kh, kw), output_size=(h, w))
        to_b = F.max_unpool2d((yx[:, None] - cross).reshape(flat), bp["argmax"][None].expand_as(cross).reshape(flat),
                              (kh, kw), output_size=(h, w))
        delta_in = (xp["in_nchw"][:, None] - bp["in_nchw"][None]).reshape(pairs, c, h, w)
        small = delta_in.abs() < MAXPOOL_EPS
        weight = torch.where(small, 0.0, (to_x + to_b) / torch.where(small, 1.0, delta_in))
        # Channels-last windows (pairs, oh, kh, ow, kw, C); positions outside every window get no gradient.
        weight = _to_hwc(weight[:, :, : oh * kh, : ow * kw]).view(pairs, oh, kh, ow, kw, c)

        def backward(g: torch.Tensor) -> torch.Tensor:  # g: (K, pairs, oh, ow, C)
            spread = self._buffer(layer, (g.shape[0], *weight.shape), g)
            torch.mul(g[:, :, :, None, :, None, :], weight[None], out=spread)
            spread = spread.view(g.shape[0], pairs, oh * kh, ow * kw, c)
            return F.pad(spread, (0, 0, 0, w - ow * kw, 0, h - oh * kh)) if (oh * kh, ow * kw) != (h, w) else spread

        return backward
