"""A model as the graph of ATen operations torch.export traces, each operation with its DeepLIFT rule.

`trace_model` turns an `nn.Module` (traced here, batch dimension dynamic) or an `ExportedProgram`
into a `ModelGraph`: the constants evaluated once, and for every operation that depends on the
input one `Rule`. A rule is one of

- `Linear`: the operation is affine in its activations (convolution, linear/matmul against
  constant weights, batch norm in eval, add/sub, scaling by constants, pooling by averages,
  concatenation, reshapes, padding, dropout in eval); DeepLIFT's multiplier is its Jacobian,
  so its backward step is its vector-Jacobian product, whatever the point.
- `Elementwise`: a one-input element-wise nonlinearity (ReLU in any spelling, LeakyReLU, ELU,
  SELU, GELU, SiLU, Sigmoid, Tanh, Softplus, ReLU6/Hardtanh, ...): the rescale rule.
- `Softmax`: softmax or log-softmax over a feature dimension: shap's rule.
- `MaxPool`: max pooling of any window (overlapping, padded, dilated, adaptive): shap's rule.

Anything else that touches the input (a product of two activations, layer norm, attention,
an operation mixing the samples of a batch) is refused with `UnsupportedModelError` naming the
operation and where it comes from in the user's code. Nothing is approximated.
"""

from __future__ import annotations

import operator
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx

aten = torch.ops.aten


class UnsupportedModelError(ValueError):
    """The model holds an operation (or a structure) without an exact DeepLIFT rule."""


ELEMENTWISE = {aten.relu, aten.leaky_relu, aten.elu, aten.selu, aten.celu, aten.gelu, aten.silu, aten.sigmoid,
               aten.tanh, aten.softplus, aten.hardtanh, aten.relu6, aten.hardsigmoid, aten.hardswish, aten.mish,
               aten.log_sigmoid, aten.clamp, aten.prelu, aten.threshold}
SOFTMAX = {aten.softmax: False, aten._softmax: False, aten.log_softmax: True, aten._log_softmax: True}
# Max pools whose value alone is in the graph, and the operation that also returns the window's argmax.
MAXPOOL_WITH_INDICES = {aten.max_pool1d: aten.max_pool1d_with_indices, aten.max_pool2d: aten.max_pool2d_with_indices,
                        aten.max_pool3d: aten.max_pool3d_with_indices}
TUPLE_MAXPOOL = {aten.max_pool2d_with_indices, aten.max_pool3d_with_indices, aten.max_pool1d_with_indices,
                 aten.adaptive_max_pool1d, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d}
IDENTITY = {aten.clone, aten.contiguous, aten.alias, aten.lift_fresh_copy, aten._to_copy, aten.to, aten.dropout,
            aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout}
RESHAPE = {aten.view, aten._unsafe_view, aten.reshape, aten.flatten, aten.squeeze, aten.unsqueeze}
# Per-sample linear operations whose arguments hold no batch size: their VJP is taken by autograd.
AUTOGRAD_LINEAR = {aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d, aten.adaptive_avg_pool1d,
                   aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten._adaptive_avg_pool2d,
                   aten._adaptive_avg_pool3d, aten.mean, aten.sum, aten.constant_pad_nd, aten.pad,
                   aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d, aten.replication_pad1d,
                   aten.replication_pad2d, aten.replication_pad3d, aten.upsample_nearest1d, aten.upsample_nearest2d,
                   aten.upsample_nearest3d, aten.upsample_bilinear2d, aten.upsample_linear1d, aten.flip, aten.roll,
                   aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle}
CONV = {aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.conv_transpose1d, aten.conv_transpose2d,
        aten.conv_transpose3d}
# Operations with a dimension argument that must not be the batch's.
DIM_ARGS = {aten.softmax: ("dim",), aten._softmax: ("dim",), aten.log_softmax: ("dim",), aten._log_softmax: ("dim",),
            aten.cat: ("dim",), aten.slice: ("dim",), aten.select: ("dim",), aten.transpose: ("dim0", "dim1"),
            aten.mean: ("dim",), aten.sum: ("dim",), aten.flip: ("dims",), aten.roll: ("dims",)}
PRODUCT = "a product of two activations has no exact DeepLIFT rule"
REASONS = {aten.layer_norm: "layer norm divides by a statistic of the activations: no exact DeepLIFT rule",
           aten.native_layer_norm: "layer norm divides by a statistic of the activations: no exact DeepLIFT rule",
           aten.group_norm: "group norm divides by a statistic of the activations: no exact DeepLIFT rule",
           aten.scaled_dot_product_attention: "attention multiplies activations: no exact DeepLIFT rule",
           aten.bmm: PRODUCT,
           aten.detach: "detach() stops the backward pass DeepLIFT needs"}


@dataclass
class Rule:
    """How DeepLIFT passes multipliers back through one operation of the graph."""

    node: str  # the value the operation produces
    inputs: tuple[str, ...]  # the activations it reads, in the order `vjp` returns their gradients
    where: str  # the operation and its place in the user's code, for messages


@dataclass
class Linear(Rule):
    # (gradient of the output (rows, *out), per-sample input shapes) -> the inputs' gradients. The caller
    # hands the gradient over: a VJP may overwrite it, and must not return one tensor for two inputs.
    vjp: Callable[[torch.Tensor, list[tuple[int, ...]]], list[torch.Tensor | None]] = None


@dataclass
class Elementwise(Rule):
    fn: Callable[[torch.Tensor], torch.Tensor] = None  # the nonlinearity, constants bound (float64)


@dataclass
class Softmax(Rule):
    dim: int = -1
    log: bool = False


@dataclass
class MaxPool(Rule):
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = None  # (values, flat argmax per window)
    tiles: tuple[int, int] | None = None  # a 2-D pool whose windows tile the input (kernel = stride, no padding)


@dataclass
class ModelGraph:
    graph: fx.Graph
    input: str  # the user input's placeholder
    output: str  # the node of the (batch, classes) output
    consts64: dict[str, object]  # values that do not depend on the input, float64
    consts: dict[str, object]  # the same, in the model's dtype (the backward pass's weights)
    rules: dict[str, Rule]  # per activation node, in graph order
    static_batch: int | None  # the traced batch size when the program fixed it, else None
    dtype: torch.dtype = torch.float32
    maxpools: bool = field(init=False)

    def __post_init__(self):
        self.maxpools = any(isinstance(rule, MaxPool) for rule in self.rules.values())


def trace_model(model: torch.nn.Module | torch.export.ExportedProgram, example: torch.Tensor, softmax: bool = False,
                weights: dict[str, torch.Tensor] | None = None) -> ModelGraph:
    """The model's graph with a rule per operation on the input; refuses what has no exact rule.

    softmax: append a softmax over the classes (the model returns logits; explanations are of probabilities).
    weights: for an `ExportedProgram`, tensors (by state-dict name) that replace some of its own.

    Tracing costs seconds, so the traced program is kept per module structure (classes, forwards,
    hyperparameters, parameter shapes, input shape): models that differ only in their weights (the
    shards of one run, the randomised copies of the faithfulness checks) reuse it with their own weights.
    """
    if isinstance(model, torch.export.ExportedProgram):
        with _TRACE_LOCK:
            key = (id(model), softmax)
            if key not in _PROGRAMS or _PROGRAMS[key][0] is not model:
                program = model.run_decompositions({})  # functional ATen: in-place ReLU becomes relu
                output = _append_softmax(program.graph) if softmax else None
                _PROGRAMS[key] = (model, program, output)
                while len(_PROGRAMS) > MAX_TRACES:
                    _PROGRAMS.pop(next(iter(_PROGRAMS)))
            _, program, output = _PROGRAMS[key]
            return _build(program, weights, output, example.device)
    if softmax:
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    model.eval()
    key = _structure(model, example)
    with _TRACE_LOCK:  # torch.export keeps global state: one trace at a time in a process
        program = _TRACES.get(key)
        if program is None:
            example = torch.cat([example, example])[:2] if len(example) < 2 else example[:2]
            try:
                program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            except Exception as exc:  # noqa: BLE001 - any tracing failure means the model cannot be read as a graph
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UnsupportedModelError(f"torch.export could not trace the model: {first}") from None
            program = program.run_decompositions({})  # functional ATen: in-place ReLU becomes relu
            _TRACES[key] = program
            while len(_TRACES) > MAX_TRACES:
                _TRACES.pop(next(iter(_TRACES)))
    weights = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return _build(program, {name: value.detach() for name, value in weights.items()}, device=example.device)


_TRACES: dict[tuple, torch.export.ExportedProgram] = {}
_PROGRAMS: dict[tuple, tuple] = {}  # (id, softmax) -> (the program given, its decomposition, the output's name)
_TRACE_LOCK = threading.Lock()
MAX_TRACES = 8


def _structure(model: torch.nn.Module, example: torch.Tensor) -> tuple:
    """What decides a module's traced graph, apart from its weights' values."""
    modules = tuple((name, type(m), id(m.__dict__["forward"]) if "forward" in m.__dict__ else None, m.training)
                    for name, m in model.named_modules())
    tensors = tuple((name, tuple(t.shape), t.dtype, t.device.type)
                    for name, t in (*model.named_parameters(), *model.named_buffers()))
    return modules, tensors, repr(model), tuple(example.shape[1:]), example.dtype, example.device.type


def _build(program: torch.export.ExportedProgram, weights: dict[str, torch.Tensor] | None = None,
           output: str | None = None, device: torch.device | None = None) -> ModelGraph:
    """`weights` (by state-dict name) replace the program's own: those of another model of the same structure.
    `output`: the node that is the model's output, when not the program's own (an appended softmax)."""
    graph = program.graph
    signature = program.graph_signature
    kinds = torch.export.graph_signature
    user_inputs = [spec.arg.name for spec in signature.input_specs if spec.kind == kinds.InputKind.USER_INPUT]
    outputs = [spec.arg.name for spec in signature.output_specs
               if spec.kind == kinds.OutputKind.USER_OUTPUT]
    if len(user_inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(f"the model must take one tensor and return one, it takes {len(user_inputs)} "
                                    f"and returns {len(outputs)}")
    constants = {}
    for spec in signature.input_specs:
        if spec.kind != kinds.InputKind.USER_INPUT:
            source = program.state_dict if spec.target in program.state_dict else program.constants
            value = (weights or {}).get(spec.target, source[spec.target])
            constants[spec.arg.name] = value.to(device) if device is not None and torch.is_tensor(value) else value
    nodes = {node.name: node for node in graph.nodes}
    (input_name,), output_name = user_inputs, output or outputs[0]
    value = nodes[input_name].meta.get("val")
    static_batch = value.shape[0] if value is not None and isinstance(value.shape[0], int) else None
    dtype = next((t.dtype for t in constants.values() if isinstance(t, torch.Tensor) and t.is_floating_point()),
                 torch.float32)

    reaches = {input_name}  # everything computed from the input (sizes too): not folded into constants
    for node in graph.nodes:
        if node.op == "call_function" and any(arg.name in reaches for arg in node.all_input_nodes):
            reaches.add(node.name)
    consts64, consts = _fold_constants(graph, constants, reaches)
    # Activations: tensors (or tuples of them) computed from the input; a size read off it is not one.
    depends = {name for name in reaches if name == input_name or _holds_tensors(nodes[name])}
    rules: dict[str, Rule] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.name not in depends or not _is_tensor(node):
            continue
        rule = _rule(node, depends, consts)
        if rule is not None:
            rules[node.name] = rule
    if output_name not in depends:
        raise UnsupportedModelError("the model's output does not depend on its input")
    return ModelGraph(graph, input_name, output_name, consts64, consts, rules, static_batch, dtype)


def _append_softmax(graph: fx.Graph) -> str:
    """Insert softmax(output, dim=1) and make it the graph's output; returns its node's name."""
    (output,) = graph.output_node().args[0]
    with graph.inserting_after(output):
        probabilities = graph.call_function(aten._softmax.default, (output, 1, False))
    probabilities.meta["val"] = output.meta.get("val")  # same shape and dtype
    graph.output_node().replace_input_with(output, probabilities)
    return probabilities.name


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _holds_tensors(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and
                                               any(isinstance(v, torch.Tensor) for v in value))


def _fold_constants(graph: fx.Graph, constants: dict, depends: set[str]) -> tuple[dict, dict]:
    """Every value that does not depend on the input, in float64 and in the model's own dtype."""
    def to64(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    consts = dict(constants)
    consts64 = {name: to64(value) for name, value in constants.items()}
    for node in graph.nodes:
        if node.op != "call_function" or node.name in depends:
            continue
        for env in (consts, consts64):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n, env=env: env[n.name])
            env[node.name] = node.target(*args, **kwargs)
    return consts64, consts


def where(node: fx.Node) -> str:
    """The operation, the user's line that made it, and the module it is in: `aten.gelu at model.py:12 (module
    head.act: GELU)`."""
    op = str(getattr(node.target, "overloadpacket", node.target))
    place = ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    torch_dir = os.path.dirname(torch.__file__)
    user = [(path, line) for path, line in frames if not path.startswith(torch_dir)]
    if user:
        place = f" at {os.path.basename(user[-1][0])}:{user[-1][1]}"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        place += f" (module {path or 'the model'}: {kind})"
    return op + place


def _refuse(node: fx.Node, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"DeepSHAP has no exact rule for {where(node)}: {why}")


def _arguments(node: fx.Node) -> dict[str, object]:
    """The operation's arguments by name, defaults filled in (fx nodes stay nodes)."""
    values = {}
    for i, argument in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            values[argument.name] = node.args[i]
        elif argument.name in node.kwargs:
            values[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            values[argument.name] = argument.default_value
    return values


def _rule(node: fx.Node, depends: set[str], consts: dict) -> Rule | None:
    """The rule of one operation on activations, or None for a value that only feeds a tuple's getitem."""
    if node.target is operator.getitem:
        return _getitem_rule(node, depends, consts)
    packet = getattr(node.target, "overloadpacket", None)
    if packet is None:
        raise _refuse(node, "not an ATen operation")
    acts = [arg for arg in node.all_input_nodes if arg.name in depends]
    inputs = tuple(dict.fromkeys(arg.name for arg in acts))
    args = _arguments(node)
    rank = len(acts[0].meta["val"].shape)  # of the (first) activation it reads: dimensions count in it
    if packet is aten.slice and _whole(args):
        return Linear(node=node.name, inputs=inputs, where=where(node), vjp=lambda g, shapes: [g])  # x[:, ...]
    for name in DIM_ARGS.get(packet, ()):
        dims = args.get(name)
        for dim in dims if isinstance(dims, (list, tuple)) else [dims]:
            if dim is None or (isinstance(dim, int) and dim % max(rank, 1) == 0):
                raise _refuse(node, "it mixes the samples of a batch (it acts on dimension 0)")
    common = {"node": node.name, "inputs": inputs, "where": where(node)}
    if packet in (aten.mul, aten.div) and sum(getattr(args.get(key), "name", None) in depends
                                              for key in ("self", "other")) > 1:  # x * x too
        raise _refuse(node, PRODUCT if packet is aten.mul else
                      "a quotient of two activations has no exact DeepLIFT rule")
    if packet in ELEMENTWISE:
        if len(inputs) != 1 or acts[0] is not node.args[0]:
            raise _refuse(node, "its parameters depend on the input")
        return _elementwise(node, common, consts)
    if packet in SOFTMAX:
        return Softmax(**common, dim=args["dim"] % rank, log=SOFTMAX[packet])
    if packet in MAXPOOL_WITH_INDICES:
        op = MAXPOOL_WITH_INDICES[packet]
        rest = list(node.args[1:])
        return MaxPool(**common, forward=lambda t: op(t, *rest), tiles=_tiles(packet, args))
    if packet in TUPLE_MAXPOOL or packet is aten._native_batch_norm_legit_no_training:
        return None  # its getitem(0) carries the rule
    if packet in REASONS:
        raise _refuse(node, REASONS[packet])
    vjp = _linear_vjp(node, packet, args, depends, consts)
    if vjp is None:
        if packet in (aten._native_batch_norm_legit_functional, aten.native_batch_norm, aten.batch_norm):
            raise _refuse(node, "batch norm in training mode: call model.eval() before exporting it")
        raise _refuse(node, "no exact DeepLIFT rule for this operation")
    return Linear(**common, vjp=vjp)


def _whole(args: dict) -> bool:
    """A slice that keeps every index (`x[:]`, which indexing adds in front of later dimensions)."""
    return args["start"] in (None, 0) and (args["end"] is None or args["end"] >= 2**62) and args["step"] == 1


def _tiles(packet, args: dict) -> tuple[int, int] | None:
    """The window of a 2-D max-pool whose windows neither overlap nor pad (the engine's fast path), else None."""
    if packet is not aten.max_pool2d:
        return None

    def pair(value) -> list[int]:
        return [value, value] if isinstance(value, int) else list(value) * (2 if len(value) == 1 else 1)

    kernel = pair(args["kernel_size"])
    stride = pair(args["stride"]) if args["stride"] else kernel  # [] means the kernel's
    if kernel == stride and pair(args["padding"]) == [0, 0] and pair(args["dilation"]) == [1, 1] \
            and not args["ceil_mode"]:
        return tuple(kernel)
    return None


def _elementwise(node: fx.Node, common: dict, consts: dict) -> Elementwise:
    rest, kwargs = node.args[1:], node.kwargs

    def fn(t: torch.Tensor) -> torch.Tensor:
        args, kw = fx.node.map_arg((rest, kwargs), lambda n: _cast(consts[n.name], t.dtype))
        return node.target(t, *args, **kw)

    return Elementwise(**common, fn=fn)


def _cast(value, dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _getitem_rule(node: fx.Node, depends: set[str], consts: dict) -> Rule | None:
    source, index = node.args
    packet = getattr(source.target, "overloadpacket", None)
    common = {"node": node.name, "inputs": (source.args[0].name,), "where": where(source)}
    if index != 0:
        if node.users:
            raise _refuse(source, "only its first output (the values) may be used")
        return None
    if packet in TUPLE_MAXPOOL:
        rest = list(source.args[1:])
        return MaxPool(**common, forward=lambda t: source.target(t, *rest))
    if packet is aten._native_batch_norm_legit_no_training:
        args = _arguments(source)
        if any(getattr(args[key], "name", None) in depends
               for key in ("weight", "bias", "running_mean", "running_var")):
            raise _refuse(source, "its statistics depend on the input")
        weight = consts[args["weight"].name] if args["weight"] is not None else None
        var = consts[args["running_var"].name]
        scale = torch.rsqrt(var.double() + args["eps"])
        scale = (scale * weight.double() if weight is not None else scale).to(var.dtype)

        def batchnorm_vjp(g, shapes):
            return [g.mul_(scale.view(1, -1, *[1] * (g.ndim - 2)).to(g.dtype))]

        return Linear(**common, vjp=batchnorm_vjp)
    raise _refuse(source, "no exact DeepLIFT rule for this operation")


def _sum_to(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A gradient of a broadcast result, summed back to one input's per-sample shape."""
    return g.sum_to_size(g.shape[0], *shape) if tuple(g.shape[1:]) != tuple(shape) else g


def _linear_vjp(node, packet, args, depends, consts):
    """The vector-Jacobian product of an operation affine in its activations, or None if it is not one."""
    def const(value):
        return consts[value.name] if isinstance(value, fx.Node) else value

    def is_act(value):
        return isinstance(value, fx.Node) and value.name in depends

    order = list(dict.fromkeys(arg.name for arg in node.all_input_nodes if arg.name in depends))
    if packet in IDENTITY:
        if packet in (aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout) \
                and args.get("train"):
            raise _refuse(node, "dropout in training mode: call model.eval() before exporting it")
        return lambda g, shapes: [g]
    if packet in RESHAPE:
        return lambda g, shapes: [g.reshape(g.shape[0], *shapes[0])]
    if packet is aten.expand:
        return lambda g, shapes: [_sum_to(g, shapes[0])]
    if packet is aten.permute:
        dims = [d % len(args["dims"]) for d in args["dims"]]
        if dims[0] != 0:
            raise _refuse(node, "it moves the batch dimension")
        inverse = [dims.index(i) for i in range(len(dims))]
        return lambda g, shapes: [g.permute(inverse)]
    if packet is aten.transpose:
        d0, d1 = args["dim0"], args["dim1"]
        return lambda g, shapes: [g.transpose(d0, d1)]
    if packet is aten.slice:
        dim, start, end, step = args["dim"], args["start"] or 0, args["end"], args["step"]
        end = 2**62 if end is None else end
        return lambda g, shapes: [aten.slice_backward(g, [g.shape[0], *shapes[0]], dim, start, end, step)]
    if packet is aten.select:
        dim, index = args["dim"], args["index"]
        return lambda g, shapes: [aten.select_backward(g, [g.shape[0], *shapes[0]], dim, index)]
    if packet is aten.cat:
        tensors, dim = args["tensors"], args["dim"]
        sizes = [t.meta["val"].shape[dim] for t in tensors]
        slots = [order.index(t.name) if is_act(t) else None for t in tensors]

        def cat_vjp(g, shapes):
            grads = [None] * len(order)
            for slot, piece in zip(slots, torch.split(g, sizes, dim)):
                if slot is not None:
                    grads[slot] = piece if grads[slot] is None else grads[slot] + piece
            return grads

        return cat_vjp
    if packet in (aten.add, aten.sub, aten.rsub):
        sign = {aten.add: (1, 1), aten.sub: (1, -1), aten.rsub: (-1, 1)}[packet]
        alpha = args.get("alpha", 1)
        factors = [sign[0] * (alpha if packet is aten.rsub else 1), sign[1] * (1 if packet is aten.rsub else alpha)]
        operands = [args["self"], args["other"]]

        def add_vjp(g, shapes):
            grads = [None] * len(order)
            handed_out = False  # g itself goes to one input at most: later steps may overwrite what they get
            for operand, factor in zip(operands, factors):
                if is_act(operand):
                    slot = order.index(operand.name)
                    piece = g if factor == 1 and not handed_out else g * factor
                    handed_out = handed_out or piece is g
                    piece = _sum_to(piece, shapes[slot])
                    grads[slot] = piece if grads[slot] is None else grads[slot] + piece
            return grads

        return add_vjp
    if packet in (aten.mul, aten.div):
        act, other = (args["self"], args["other"]) if is_act(args["self"]) else (args["other"], args["self"])
        if packet is aten.div and not is_act(args["self"]):
            return None  # constant / activation is not affine
        factor = const(other)
        divide = packet is aten.div
        return lambda g, shapes: [_sum_to(g / _cast(factor, g.dtype) if divide else g * _cast(factor, g.dtype),
                                          shapes[0])]
    if packet is aten.neg:
        return lambda g, shapes: [-g]
    if packet is aten.linear:
        if is_act(args["weight"]):
            return None
        weight = const(args["weight"])
        return lambda g, shapes: [g @ weight.to(g.dtype)]
    if packet in (aten.addmm, aten.mm, aten.matmul):
        first, second = (args["mat1"], args["mat2"]) if packet is aten.addmm else (args["self"], args["other"])
        if is_act(second) or (packet is aten.addmm and is_act(args["self"])):
            return None
        weight = const(second)
        if weight.ndim != 2:
            return None
        alpha = args.get("alpha", 1)
        return lambda g, shapes: [(g @ weight.T.to(g.dtype)) * alpha if alpha != 1 else g @ weight.T.to(g.dtype)]
    if packet in CONV:
        if any(is_act(args[key]) for key in ("weight", "bias") if key in args):
            return None
        return _conv_vjp(node, packet, args, const(args["weight"]))
    if packet in AUTOGRAD_LINEAR:
        rest, kwargs = node.args[1:], node.kwargs
        if any(is_act(arg) for arg in node.all_input_nodes[1:]):
            return None
        if packet in (aten.mean, aten.sum) and args.get("dim") in (None, []):
            raise _refuse(node, "it mixes the samples of a batch (it reduces over every dimension)")
        target = node.target

        def autograd_vjp(g, shapes):
            primal = g.new_zeros(()).expand(g.shape[0], *shapes[0])
            _, pullback = torch.func.vjp(lambda t: target(t, *rest, **kwargs), primal)
            return [pullback(g)[0]]

        return autograd_vjp
    return None


def _conv_vjp(node, packet, args, weight):
    """A convolution's transpose (a transposed convolution with the same weight), or the reverse."""
    n = weight.ndim - 2
    transposed = args.get("transposed", packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d))

    def tup(value, fill=0):
        value = fill if value is None else value
        return [value] * n if isinstance(value, int) else list(value) * (n if len(value) == 1 else 1)

    stride, dilation, groups = tup(args["stride"], 1), tup(args["dilation"], 1), args["groups"]
    kernel = list(weight.shape[2:])
    if transposed:
        padding = tup(args["padding"])
        conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[n - 1]
        return lambda g, shapes: [conv(g, weight.to(g.dtype), None, stride, padding, dilation, groups)]
    crop = None
    if isinstance(args["padding"], str):  # 'valid' or 'same'; 'same' may pad one side more
        total = [d * (k - 1) for d, k in zip(dilation, kernel)] if args["padding"] == "same" else [0] * n
        low = [t // 2 for t in total]
        if total == [2 * lo for lo in low]:
            padding = low
        else:
            padding, crop = [0] * n, (low, total)
    else:
        padding = tup(args["padding"])
    transpose = (torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
                 torch.nn.functional.conv_transpose3d)[n - 1]

    def conv_vjp(g, shapes):
        size = list(shapes[0][1:])
        if crop is not None:
            size = [s + t for s, t in zip(size, crop[1])]
        # Rows and columns the forward never reached need output_padding to restore the input size.
        extra = [s - ((o - 1) * st - 2 * p + d * (k - 1) + 1)
                 for s, o, st, p, d, k in zip(size, g.shape[2:], stride, padding, dilation, kernel)]
        if n == 2:  # oneDNN's transposed convolutions run about twice as fast on channels-last tensors here
            g = g.contiguous(memory_format=torch.channels_last)
        grad = transpose(g, weight.to(g.dtype), None, stride, padding, extra, groups, dilation)
        if crop is not None:
            grad = grad[(slice(None), slice(None), *[slice(lo, lo + s) for lo, s in zip(crop[0], shapes[0][1:])])]
        return [grad]

    return conv_vjp
