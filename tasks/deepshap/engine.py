"""An exact DeepSHAP engine for any PyTorch model torch.export can trace, more exact than shap and faster.

It computes what `shap.DeepExplainer` computes for PyTorch (DeepLIFT's rescale rule against each
background sample, averaged over the background), on the model's traced graph of ATen operations
(`tasks/deepshap/graph.py`): every operation that touches the input has a rule, or the model is
refused naming the operation and the line of the user's code that made it. So residual
connections, concatenation, functional activations (`F.relu` in a forward), modules used twice,
in-place ReLU and subclasses with their own forward are all explained as the graph computes them.

Where shap is right, each rule is shap's: the rescale rule for element-wise nonlinearities and
softmax with shap's fallback to the gradient where |x - b| < 1e-6, and shap's max-pool rule in full
(the image's half of the gradient to the image's argmax, the background's half to the background's,
zero where |x - b| < 1e-7). Where shap is wrong it follows DeepLIFT: shap hooks modules, so it treats
functional activations as linear and a module used twice with the activations of its last call
(shap issues #3938, #1479, #3505), and its max-unpool drops all but one share where max-pool
windows overlap; here every operation is its own node and overlapping windows add their shares.

More exact than shap: every rule's multipliers come from activations computed in float64 (forward
passes are a small share of the work); the backward pass runs in the model's dtype. On the reference
CNN the float32 values are within about 1e-6 of the float64 answer (largest value = 1); shap's float32
values are about 1e-3 away, rounding of activations amplified by the rescale rule where x and b nearly
agree. On CUDA, TF32 is turned off while the engine works (and put back after).

Less work than shap: background activations are computed once; each image is forwarded once; the
multipliers of each (image, background) pair are shared by every class, and all classes travel
together through one backward pass of vector-Jacobian products (no autograd graph over the model, no
hooks, nothing backpropagated through the background). Images and background are chunked so memory
stays bounded; on CUDA the chunk comes from the free device memory, and halves if it still runs out.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from tasks.model.run_model import RunModel
from tasks.deepshap.graph import (Elementwise, Linear, MaxPool, ModelGraph, Softmax, UnsupportedModelError,
                                  trace_model)

__all__ = ["DeepShapEngine", "UnsupportedModelError", "exact_float32"]

NONLINEAR_EPS = 1e-6  # shap: below this |x - b|, element-wise rules fall back to the gradient
MAXPOOL_EPS = 1e-7  # shap: below this |x - b|, max-pool multipliers are zero


@contextlib.contextmanager
def exact_float32():
    """Full float32 matmuls and convolutions on CUDA (PyTorch runs them as TF32 by default); put back after."""
    # The legacy flags: torch.export (and other code) reads them, and refuses to once the newer
    # per-backend fp32_precision settings disagree with each other.
    settings = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]
    saved = [getattr(owner, name) for owner, name in settings]
    for owner, name in settings:
        setattr(owner, name, False)
    try:
        yield
    finally:
        for (owner, name), value in zip(settings, saved):
            setattr(owner, name, value)


def model_engine(model: RunModel, background: torch.Tensor, **options) -> DeepShapEngine:
    """The engine for the class probabilities of a run's model (tasks/model/run_model.py)."""
    return DeepShapEngine(model.deepshap_graph(background), background, softmax=model.logits, weights=model.replaced,
                          **options)


class DeepShapEngine:
    """DeepSHAP values of a model's outputs: shap.DeepExplainer's rules, float64 multipliers.

    model: an `nn.Module` (traced here with torch.export) or an `ExportedProgram`, taking one tensor
    (batch, *input_shape) and returning (batch, n_outputs).
    background: (n_background, *input_shape) tensor on the device the work should run on.
    max_rows: the largest batch of the backward pass (classes x images x background samples). The CPU
    default keeps the working set near the L3 cache (measured best here); on CUDA it is chosen from
    the free device memory.
    softmax: explain the softmax of the model's outputs (a model returning logits).
    weights: an `ExportedProgram`'s tensors to replace, by state-dict name (a randomised copy of it).
    """

    CPU_ROWS, CUDA_MEMORY_SHARE = 400, 0.5

    def __init__(self, model: torch.nn.Module | torch.export.ExportedProgram, background: torch.Tensor,
                 max_rows: int | None = None, softmax: bool = False, weights: dict | None = None):
        self.background = background.detach()
        self.graph: ModelGraph = trace_model(model, self.background, softmax, weights)
        self.dtype = self.graph.dtype  # the backward pass's dtype: the model's own
        self._nonlinear = [name for name, rule in self.graph.rules.items() if not isinstance(rule, Linear)]
        with torch.no_grad(), exact_float32():
            self.shapes: dict[str, tuple[int, ...]] = {}
            bg_out, self._bg = self._forward(self.background)
        if bg_out.ndim != 2:
            raise UnsupportedModelError(f"the model's output must be (batch, classes), got {tuple(bg_out.shape)}")
        self.n_outputs = bg_out.shape[1]
        self.expected_value = bg_out.mean(0).cpu()  # (K,) float64
        self.max_rows = max_rows or self._default_rows()

    # -- forward passes (float64) ------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """The output (float64) and, per nonlinear operation, what its rule needs of this batch."""
        static = self.graph.static_batch
        if static is None or len(x) == static:
            return self._forward_batch(x)
        # A program exported with a fixed batch size runs on batches of exactly that size.
        pieces = []
        for start in range(0, len(x), static):
            chunk = x[start : start + static]
            padded = torch.cat([chunk, chunk[-1:].expand(static - len(chunk), *chunk.shape[1:])])
            pieces.append((len(chunk), self._forward_batch(padded)))
        output = torch.cat([out[:n] for n, (out, _) in pieces])
        records = {name: {key: torch.cat([rec[name][key][:n] for n, (_, rec) in pieces])
                          for key in pieces[0][1][1][name]} for name in pieces[0][1][1]}
        return output, records

    def _forward_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        graph, rules = self.graph, self.graph.rules
        env = dict(graph.consts64)
        env[graph.input] = x.double()
        records: dict[str, dict[str, torch.Tensor]] = {}
        for node in graph.graph.nodes:
            if node.op != "call_function" or node.name in env:
                continue
            rule = rules.get(node.name)
            if isinstance(rule, MaxPool):
                values, argmax = rule.forward(env[rule.inputs[0]])
                env[node.name] = values
                records[node.name] = {"in": env[rule.inputs[0]], "out": values, "argmax": argmax}
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])
            env[node.name] = node.target(*args, **kwargs)
            if isinstance(rule, Elementwise):
                records[node.name] = {"in": env[rule.inputs[0]], "out": env[node.name],
                                      "slope": _slope(rule.fn, env[rule.inputs[0]])}
            elif isinstance(rule, Softmax):
                out = env[node.name]
                records[node.name] = {"in": env[rule.inputs[0]], "out": out, "p": out.exp() if rule.log else out}
        self._record_shapes(env, len(x))
        return env[graph.output], records

    def _record_shapes(self, env: dict, batch: int) -> None:
        """Per-sample shapes of every activation; refuses an operation whose result is not per sample."""
        for name in (self.graph.input, *self.graph.rules):
            value = env[name]
            if value.ndim == 0 or value.shape[0] != batch:
                raise UnsupportedModelError(f"{self.graph.rules[name].where} mixes the samples of a batch")
            self.shapes[name] = tuple(value.shape[1:])

    def _default_rows(self) -> int:
        if not self.background.is_cuda:
            return self.CPU_ROWS
        free, _ = torch.cuda.mem_get_info(self.background.device)
        return rows_for_memory(free * self.CUDA_MEMORY_SHARE, self.shapes, self._nonlinear, self.n_outputs)

    # -- SHAP values -------------------------------------------------------------------------------

    @torch.no_grad()
    def shap_values(self, images: torch.Tensor) -> np.ndarray:
        """SHAP values, (n_images, n_outputs, *input_shape), float32, as shap.DeepExplainer's."""
        images = images.detach().to(self.background.device)
        out = np.empty((len(images), self.n_outputs, *images.shape[1:]), dtype=np.float32)
        start = 0
        with exact_float32():
            while start < len(images):
                per_pass = max(1, self.max_rows // self.n_outputs)  # (image, background) pairs per pass
                bg_chunk = min(len(self.background), per_pass)
                img_chunk = max(1, per_pass // bg_chunk)
                x = images[start : start + img_chunk]
                try:
                    out[start : start + len(x)] = self._explain(x, bg_chunk).transpose(0, 1).float().cpu().numpy()
                except torch.cuda.OutOfMemoryError:
                    if self.max_rows <= self.n_outputs:
                        raise
                    self.max_rows //= 2  # the estimate was too generous for this device: smaller passes
                    torch.cuda.empty_cache()
                    continue
                start += len(x)
        return out

    def _explain(self, x: torch.Tensor, bg_chunk: int) -> torch.Tensor:
        """(K, n_images, *input_shape) float64: the mean over the background of multipliers x (x - b)."""
        _, records = self._forward(x)
        n_bg = len(self.background)
        total = torch.zeros((self.n_outputs, *x.shape), dtype=torch.float64, device=x.device)
        for b0 in range(0, n_bg, bg_chunk):
            bg = slice(b0, b0 + bg_chunk)
            grad = self._backward(self._multipliers(records, bg), len(x), len(self.background[bg]))
            delta = x.double()[:, None] - self.background[bg].double()[None]  # (n_x, n_b, *input)
            grad = grad.view(self.n_outputs, len(x), -1, *x.shape[1:])
            total += (grad.double() * delta[None]).sum(2)
        return total / n_bg

    def _multipliers(self, records: dict, bg: slice) -> dict[str, dict]:
        """Per nonlinear operation, its rule's factors for every (image, background) pair of this pass."""
        track_image_half = self.graph.maxpools
        factors = {}
        for name in self._nonlinear:
            rule, xr = self.graph.rules[name], records[name]
            br = {key: value[bg] for key, value in self._bg[name].items()}
            n_x, n_b = len(xr["in"]), len(br["in"])

            def pairs(tensor_x, tensor_b):  # (P, ...) with P = n_x * n_b, image-major
                return (tensor_x[:, None] - tensor_b[None]).flatten(0, 1)

            def each(tensor, of_image):  # one side repeated for every pair
                expanded = tensor[:, None] if of_image else tensor[None]
                return expanded.expand(n_x, n_b, *tensor.shape[1:]).flatten(0, 1)

            delta_in = pairs(xr["in"], br["in"])
            if isinstance(rule, MaxPool):
                cross = torch.maximum(xr["out"][:, None], br["out"][None]).flatten(0, 1)
                small = delta_in.abs() < MAXPOOL_EPS
                if rule.tiles is not None:  # each input in one window: one weight per input, shared by classes
                    factors[name] = _tiling_weights(rule.tiles, cross, each(br["out"], False), each(xr["out"], True),
                                                    each(xr["argmax"], True), each(br["argmax"], False), small,
                                                    delta_in, self.dtype, track_image_half)
                    continue
                factors[name] = {
                    "to_image": _layout(cross - each(br["out"], False), self.dtype),
                    "to_background": _layout(each(xr["out"], True) - cross, self.dtype),
                    "argmax_image": _argmax_layout(each(xr["argmax"], True)),
                    "argmax_background": _argmax_layout(each(br["argmax"], False)),
                    "inverse": _layout(torch.where(small, 0.0, 1.0 / torch.where(small, 1.0, delta_in)), self.dtype)}
                continue
            small = delta_in.abs() < NONLINEAR_EPS
            ratio = pairs(xr["out"], br["out"]) / torch.where(small, 1.0, delta_in)
            if isinstance(rule, Elementwise):
                m_b = torch.where(small, each(br["slope"], False), ratio)
                m_x = torch.where(small, each(xr["slope"], True), ratio) if track_image_half else None
                factors[name] = {"b": _layout(m_b, self.dtype),
                                 "x": None if m_x is None or torch.equal(m_x, m_b) else _layout(m_x, self.dtype)}
            else:  # softmax: element-wise rescale; the softmax Jacobian where the input barely moves
                fallback = bool(small.any())
                factors[name] = {"ratio": ratio.to(self.dtype), "small": small if fallback else None,
                                 "p_b": each(br["p"], False).to(self.dtype) if fallback else None,
                                 "p_x": each(xr["p"], True).to(self.dtype) if fallback and track_image_half else None}
        return factors

    def _backward(self, factors: dict, n_x: int, n_b: int) -> torch.Tensor:
        """Multipliers of the input for every (class, image, background) row: (K * pairs, *input_shape).

        Gradients travel as (background half, image half); the image half is None while it equals the
        background half, which is all the way unless a max-pool is below a fallback that differs.
        """
        k, pairs = self.n_outputs, n_x * n_b
        rows = k * pairs
        device = self.background.device
        start = torch.eye(k, dtype=self.dtype, device=device)[:, None, :].expand(k, pairs, k).reshape(rows, k)
        grads: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {self.graph.output: (start, None)}

        def add(name: str, g_b: torch.Tensor | None, g_x: torch.Tensor | None) -> None:
            if g_b is None:
                return
            if name not in grads:
                grads[name] = (g_b, g_x)
                return
            old_b, old_x = grads[name]
            new_x = None if old_x is None and g_x is None else \
                (old_x if old_x is not None else old_b) + (g_x if g_x is not None else g_b)
            grads[name] = (old_b + g_b, new_x)

        for name in reversed(list(self.graph.rules)):
            if name not in grads:
                continue
            g_b, g_x = grads.pop(name)
            rule = self.graph.rules[name]
            if isinstance(rule, Linear):
                in_shapes = [self.shapes[i] for i in rule.inputs]
                outs_b = rule.vjp(g_b, in_shapes)
                outs_x = rule.vjp(g_x, in_shapes) if g_x is not None else [None] * len(outs_b)
                for source, out_b, out_x in zip(rule.inputs, outs_b, outs_x):
                    add(source, out_b, out_x)
                continue
            f = factors[name]
            shape = (k, pairs, *self.shapes[name])
            if isinstance(rule, Elementwise):  # in place: gradients are handed over, never shared
                out_x = None
                if g_x is not None:
                    out_x = g_x.view(shape).mul_(f["x"] if f["x"] is not None else f["b"])
                elif f["x"] is not None:
                    out_x = g_b.view(shape) * f["x"]
                out_b = g_b.view(shape).mul_(f["b"])
                add(rule.inputs[0], out_b.view(g_b.shape), None if out_x is None else out_x.view(g_b.shape))
            elif isinstance(rule, Softmax):
                out_b = _softmax_rule(g_b.view(shape), f, f["p_b"], rule)
                image_half = g_x if g_x is not None else g_b
                out_x = _softmax_rule(image_half.view(shape), f, f["p_x"], rule) if f["p_x"] is not None else \
                    (None if g_x is None else _softmax_rule(g_x.view(shape), f, f["p_b"], rule))
                add(rule.inputs[0], out_b.view(g_b.shape), None if out_x is None else out_x.view(g_b.shape))
            else:
                add(rule.inputs[0], self._maxpool_rule(g_b, g_x, f, k, rule), None)
        return grads[self.graph.input][0]

    def _maxpool_rule(self, g_b: torch.Tensor, g_x: torch.Tensor | None, f: dict, k: int,
                      rule: MaxPool) -> torch.Tensor:
        """shap's max-pool rule: each window's output difference goes to the image's argmax (carried by the
        image half of the gradient) and to the background's argmax (by the background half), then is
        divided by the input difference there. Overlapping windows add their shares."""
        in_shape = self.shapes[rule.inputs[0]]
        rows, channels = g_b.shape[0], g_b.shape[1]
        if rule.tiles is not None:
            return _tiling_backward(rule.tiles, g_b, g_x, f, k, in_shape)
        image_half = g_x if g_x is not None else g_b
        # Scatter along the flattened spatial positions of each channel; images stay channels-last:
        # (rows, positions, C), so each multiply and the scatter read memory in order.
        images = len(in_shape) == 3
        spread = torch.zeros((rows, int(np.prod(in_shape[1:])), channels) if images else
                             (rows, channels, int(np.prod(in_shape[1:]))), dtype=g_b.dtype, device=g_b.device)
        for g, share, argmax in ((image_half, f["to_image"], f["argmax_image"]),
                                 (g_b, f["to_background"], f["argmax_background"])):
            # The last use of each half may overwrite it (the image half is g_b itself while they agree).
            last_use = g is not g_b or share is f["to_background"]
            values = (g.view(k, *share.shape).mul_(share) if last_use else g.view(k, *share.shape) * share)
            values = values.view(rows, *share.shape[1:])
            values = (values.permute(0, 2, 3, 1).reshape(rows, -1, channels) if images
                      else values.view(rows, channels, -1))
            index = argmax[None].expand(k, *argmax.shape).reshape(values.shape)
            spread.scatter_add_(1 if images else 2, index, values)
        grad = (spread.view(rows, *in_shape[1:], channels).permute(0, 3, 1, 2) if images
                else spread.view(rows, *in_shape))
        return grad.view(k, -1, *in_shape).mul_(f["inverse"]).view(rows, *in_shape)


def _layout(factors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-pair factors in the backward pass's dtype; image-shaped ones channels-last, like the gradients the
    transposed convolutions return (products of tensors in two layouts are several times slower)."""
    factors = factors.to(dtype)
    return factors.contiguous(memory_format=torch.channels_last) if factors.ndim == 4 else factors


def _tiling_weights(tiles, cross, out_b, out_x, argmax_x, argmax_b, small, delta_in, dtype, image_half: bool) -> dict:
    """Per pair and input position of a tiling max-pool: its share of its window's output difference over
    its input difference (the image's argmax gets the image's share, the background's its own): (P, C, H, W),
    channels-last; with an image half, each share apart too."""
    kernel = list(tiles)
    size = list(delta_in.shape[-2:])
    inverse = torch.where(small, 0.0, 1.0 / torch.where(small, 1.0, delta_in))
    to_x = F.max_unpool2d(cross - out_b, argmax_x, kernel, output_size=size) * inverse
    to_b = F.max_unpool2d(out_x - cross, argmax_b, kernel, output_size=size) * inverse
    both = {"both": _layout(to_x + to_b, dtype)}
    return {**both, "image": _layout(to_x, dtype), "background": _layout(to_b, dtype)} if image_half else both


def _tiling_backward(tiles, g_b, g_x, f, k, in_shape) -> torch.Tensor:
    """Each output gradient spread over its window, times the window's weights: (rows, C, H, W), channels-last."""
    kh, kw = tiles
    c, h, w = in_shape
    rows, oh, ow = g_b.shape[0], g_b.shape[2], g_b.shape[3]
    pairs = rows // k

    def spread(g, weight):
        weight = weight[:, :, : oh * kh, : ow * kw].view(pairs, c, oh, kh, ow, kw)
        out = torch.empty((k, pairs, oh, kh, ow, kw, c), dtype=g.dtype, device=g.device)
        torch.mul(g.view(k, pairs, c, oh, 1, ow, 1), weight[None], out=out.permute(0, 1, 6, 2, 3, 4, 5))
        return out

    if g_x is None:
        out = spread(g_b, f["both"])
    else:
        out = spread(g_x, f["image"])
        out += spread(g_b, f["background"])
    grad = out.view(rows, oh * kh, ow * kw, c).permute(0, 3, 1, 2)
    if (oh * kh, ow * kw) != (h, w):  # rows and columns in no window get nothing
        grad = F.pad(grad, (0, w - ow * kw, 0, h - oh * kh)).contiguous(memory_format=torch.channels_last)
    return grad


def _argmax_layout(argmax: torch.Tensor) -> torch.Tensor:
    """Max-pool argmaxes (P, C, *window grid) in the order `_maxpool_rule` scatters: (P, positions, C) for images."""
    return argmax.permute(0, 2, 3, 1).reshape(len(argmax), -1, argmax.shape[1]) if argmax.ndim == 4 else argmax


def _slope(fn, inputs: torch.Tensor) -> torch.Tensor:
    """The derivative of an element-wise function at every input (its Jacobian's diagonal)."""
    leaf = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return slope


def _softmax_rule(g: torch.Tensor, f: dict, p: torch.Tensor | None, rule: Softmax) -> torch.Tensor:
    """g (K, pairs, ...) times the rescale ratio; where the input barely moved, the Jacobian's transpose at p
    (the softmax probabilities of that half)."""
    rescaled = g * f["ratio"]
    if f["small"] is None:
        return rescaled
    dim = rule.dim + 1  # g has the class dimension in front
    if rule.log:
        jacobian = g - p * g.sum(dim, keepdim=True)
    else:
        jacobian = p * (g - (g * p).sum(dim, keepdim=True))
    return torch.where(f["small"], jacobian, rescaled)


def rows_for_memory(budget_bytes: float, shapes: dict[str, tuple[int, ...]], nonlinear: list[str],
                    n_outputs: int) -> int:
    """Backward rows (classes x pairs) that fit a memory budget.

    Per pair: every nonlinear operation's factors (up to four values and two int64 argmaxes per element)
    and the float64 temporaries that make them; per row: a few live gradients of the largest activation.
    """
    largest = max(int(np.prod(shape)) for shape in shapes.values())
    per_pair = sum(int(np.prod(shapes[name])) for name in nonlinear) * (4 * 4 + 2 * 8) + largest * 8 * 6
    per_row = largest * 4 * 6
    pairs = int(budget_bytes // (n_outputs * per_row + per_pair))
    return max(n_outputs, pairs * n_outputs)
