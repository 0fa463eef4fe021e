"""The training and evaluation steps compiled for an NVIDIA GPU that this machine need not
have, and counted: what scripts/benchmark_compiled.py prints and the compile tests check.

XLA's CUDA plugin (the `gpu-compile` extra) compiles for a GPU described by a
GpuTargetConfigProto, with no GPU and no driver, when JAX runs on the CPU
(JAX_PLATFORMS=cpu): `jax.experimental.topologies.get_topology_desc` gives
compile-only devices of that GPU, and the real steps of a config (the same
`setup.build_steps` a run uses) are compiled over a mesh of them.

The optimized program (`compiled.as_text()`) then says, kernel by kernel, what
one step launches: fusions, cuDNN convolutions (and in which layout),
copies, collectives; and every kernel's operand and result shapes. From those:

* bytes per image: every kernel's operand and result bytes, summed over the
  entry computation, over the per-GPU batch (cuDNN's scratch buffers left out);
* FLOPs: those of the convolutions and matrix products, from their shapes;
* a per-kernel roofline: each kernel takes max(FLOPs / peak, bytes /
  bandwidth) at the GPU's data-sheet peaks, summed over the step: an upper
  bound on img/s, and a yardstick for changes, not a prediction (no
  autotuning happens here, and L2 reuse, launch gaps and the overlap of
  kernels are ignored).

This module imports no CUDA plugin itself: with none installed,
`topology_mesh` raises a ConfigError that names the extra.
"""

import collections
import dataclasses
import functools
import math
import re
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import hardware, models, precision
from resnet_jax.bench import baselines
from resnet_jax.errors import ConfigError
from resnet_jax.train import setup


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """Data-sheet facts of one GPU, enough for XLA to compile for it."""

    name: str  # as jax's device_kind would say it
    compute_capability: tuple[int, int]
    cores: int  # streaming multiprocessors
    clock_ghz: float  # boost clock
    memory_bytes: int
    memory_bandwidth: float  # bytes/s
    l2_bytes: int
    shared_memory_per_core: int
    shared_memory_per_block_optin: int

    @property
    def dense_bf16_flops(self) -> float:
        return hardware.peak_flops(self.name, "bf16")


# NVIDIA's data sheets: SMs, boost clock, memory, bandwidth, L2, shared memory per SM (the
# A100's 164 KiB and Hopper's 228 KiB, less 1 KiB per block opt-in).
TARGETS = {
    "a100": GpuTarget("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 80 * 2**30, 2.039e12,
                      40 * 2**20, 164 * 2**10, 163 * 2**10),
    "h100": GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 80 * 2**30, 3.35e12,
                      50 * 2**20, 228 * 2**10, 227 * 2**10),
    "h200": GpuTarget("NVIDIA H200", (9, 0), 132, 1.98, 141 * 10**9, 4.8e12,
                      50 * 2**20, 228 * 2**10, 227 * 2**10),
}


def target_for(device_kind: str) -> str | None:
    """The TARGETS key of a GPU as jax names it ('NVIDIA H200' -> 'h200'), or None. Any
    A100 is counted as the 80 GB SXM part, any H100 as the SXM part."""
    kind = device_kind.lower()
    return next((key for key in ("h200", "h100", "a100") if key in kind), None)


def target_config(target: GpuTarget) -> str:
    """The GpuTargetConfigProto (text format) that XLA compiles for."""
    major, minor = target.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {target.shared_memory_per_core}
  threads_per_core_limit: 2048
  core_count: {target.cores}
  fpus_per_core: {64 if major == 8 else 128}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.memory_bandwidth)}
  l2_cache_size: {target.l2_bytes}
  clock_rate_ghz: {target.clock_ghz}
  device_memory_size: {target.memory_bytes}
  shared_memory_per_block_optin: {target.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 patch: 0 }}
device_description_str: "{target.name}"
"""


def topology_mesh(target: GpuTarget, devices: int) -> Mesh:
    """A one-axis mesh ('data') of `devices` compile-only GPUs of `target`."""
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            platform="cuda", topology=f"1x1x{devices}", target_config=target_config(target))
    except Exception as error:  # noqa: BLE001  JAX raises several kinds, all meaning this
        raise ConfigError(
            f"cannot compile for {target.name} here ({' '.join(str(error).split())[:200]}): "
            "install the CUDA plugin and ptxas (pip install -e '.[gpu-compile]') and run with "
            "JAX_PLATFORMS=cpu") from None
    return Mesh(np.asarray(topology.devices), ("data",))


# --- compiling a config's steps -----------------------------------------------------------


def arch_recipe(arch: str, precision_name: str, per_device_batch: int, image_size: int):
    """The arch's recipe with a benchmark row's precision, per-device batch and image size
    (resnet_tiny, for dry runs, has no recipe of its own: it borrows RN50 v1.5's)."""
    config = config_lib.recipe(arch if arch in models.FULL_SIZE else "resnet50_v15")
    config.arch, config.precision = arch, precision_name
    config.per_device_batch_size, config.image_size = per_device_batch, image_size
    return config


def step_config(arch: str, precision_name: str, per_device_batch: int, image_size: int = 224):
    """`arch_recipe` on synthetic data, one optimizer step per batch (a recipe's gradient
    accumulation repeats the same micro-batch program; the ResNeXts' optimizer batch of
    1,024 is left out)."""
    config = arch_recipe(arch, precision_name, per_device_batch, image_size)
    config.data.backend = "synthetic"
    config.optimizer_batch_size = 0
    return config


@dataclasses.dataclass
class Compiled:
    """One config's steps compiled for one target and device count."""

    config: object
    target: GpuTarget
    devices: int
    train: object  # jax.stages.Compiled
    eval: object
    train_seconds: float  # compile time of the train step (tracing included)
    eval_seconds: float


def _abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


def compile_steps(config, target: GpuTarget, devices: int = 1) -> Compiled:
    """The train and eval steps of `config` compiled for `devices` GPUs of `target`."""
    setup.prepare(config)
    mesh = topology_mesh(target, devices)
    accumulation = config_lib.accumulation_steps(config, devices)
    train_batch = config_lib.optimizer_batch_size(config, devices)
    steps = setup.build_steps(config, mesh, train_batch=train_batch, accumulation=accumulation,
                              steps_per_epoch=data_lib.steps_per_epoch(
                                  config.data.synthetic_train_images, train_batch))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = _abstract(jax.eval_shape(steps.create_state, jax.random.key(0)), replicated)
    size, dtype = config.image_size, precision.image_dtype(config.precision)
    images = jax.ShapeDtypeStruct((train_batch, size, size, 3), dtype, sharding=sharded)
    labels = jax.ShapeDtypeStruct((train_batch,), jnp.int32, sharding=sharded)
    start = time.perf_counter()
    train = steps.train_step.trace(state, {"images": images, "labels": labels}).lower().compile()
    train_seconds = time.perf_counter() - start
    eval_batch = config_lib.eval_global_batch_size(config, devices)
    batch = {"images": jax.ShapeDtypeStruct((eval_batch, config.eval_image_size,
                                             config.eval_image_size, 3), dtype, sharding=sharded),
             "labels": jax.ShapeDtypeStruct((eval_batch,), jnp.int32, sharding=sharded),
             "mask": jax.ShapeDtypeStruct((eval_batch,), jnp.bool_, sharding=sharded)}
    start = time.perf_counter()
    evaluate = steps.eval_step.trace(state.params, state.batch_stats, batch).lower().compile()
    return Compiled(config, target, devices, train, evaluate, train_seconds,
                    time.perf_counter() - start)


# --- reading the optimized program --------------------------------------------------------

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(pred|[sufb]f?\d+|f8e\w+)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(?:, |$)")
_KERNEL_OPS = {"fusion", "custom-call", "copy", "copy-start", "all-reduce", "all-reduce-start",
               "all-gather", "all-gather-start", "reduce-scatter", "collective-permute",
               "collective-permute-start", "all-to-all", "sort", "rng-bit-generator",
               "convolution", "dot", "transpose", "reduce", "scatter", "gather"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                "all-to-all")
_HOST = ("send", "recv", "infeed", "outfeed")
_HOST_CALLBACKS = ("callback", "host")


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape_text)]


def _nbytes(arrays, *, skip_scratch: bool = False) -> int:
    total = 0
    for dtype, dims in arrays:
        if skip_scratch and dtype == "u8":  # cuDNN's workspace, a tuple's last element
            continue
        total += _BYTES.get(dtype, 4) * math.prod(dims)
    return total


@dataclasses.dataclass
class Kernel:
    """One kernel of the entry computation."""

    name: str
    op: str  # fusion, cudnn forward/backward-input/backward-filter, copy, all-reduce, ...
    bytes: int  # operands + results
    flops: float  # convolutions' and matrix products' multiply-adds x 2
    result: list  # [(dtype, dims)]
    layout: str = ""  # a convolution's dim_labels


def _computations(hlo: str) -> dict[str, list[str]]:
    """Each computation's instruction lines, by name ('ENTRY' for the entry computation)."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            name = "ENTRY" if header.group(1) else header.group(2)
            computations[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None and line.strip():
            computations[name].append(line)
    return computations


def _conv_flops(line: str, result, operands, target: str = "__cudnn$convForward") -> float:
    """2 x the forward output's elements x each output's window and input features.

    Every kind is counted in the forward convolution's terms (dim_labels are the
    forward's): forward convolutions (and HLO's `convolution`) map (input,
    filter) -> output, backward-input ones (gradient, filter) -> input
    gradient, backward-filter ones (input, gradient) -> filter gradient.
    """
    labels = re.search(r"dim_labels=\w+_(\w+)->\w+", line)
    if not labels or len(operands) < 2:
        return 0.0
    if target == "__cudnn$convBackwardFilter":
        output, kernel = operands[1][1], result[0][1]
    elif target == "__cudnn$convBackwardInput":
        output, kernel = operands[0][1], operands[1][1]
    else:
        output, kernel = result[0][1], operands[1][1]
    per_output = math.prod(size for label, size in zip(labels.group(1), kernel, strict=False)
                           if label != "o")
    return 2.0 * math.prod(output) * per_output


def _dot_flops(line: str, result, operands) -> float:
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    if not contracting or not operands:
        return 0.0
    lhs = operands[0][1]
    size = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 2.0 * math.prod(result[0][1]) * size


def _fusion_flops(computations, name: str) -> float:
    """The FLOPs of the dots and convolutions inside a fused computation."""
    flops = 0.0
    shapes = {}
    for line in computations.get(name, []):
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        inst, shape_text, op, args = m.groups()
        shapes[inst] = _arrays(shape_text)
        operands = [shapes.get(a) for a in re.findall(r"%([\w.\-]+)", args)]
        operands = [o[0] for o in operands if o]
        if op == "dot":
            flops += _dot_flops(line, shapes[inst], operands)
        elif op == "convolution":
            flops += _conv_flops(line, shapes[inst], operands)
        for called in re.findall(r"calls=%([\w.\-]+)", line):
            flops += _fusion_flops(computations, called)
    return flops


def kernels(hlo: str) -> list[Kernel]:
    """The kernels one run of the entry computation launches, in program order: a while
    loop's body as often as its known trip count, a conditional's largest branch."""
    return _kernels_of(_computations(hlo), "ENTRY")


def _kernels_of(computations, name: str) -> list[Kernel]:
    shapes, out = {}, []
    for line in computations.get(name, []):
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        inst, shape_text, op, args = m.groups()
        result = _arrays(shape_text)
        shapes[inst] = result
        if op == "while":
            body = re.search(r"body=%([\w.\-]+)", line).group(1)
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            out += _kernels_of(computations, body) * (int(trips.group(1)) if trips else 1)
            continue
        if op == "conditional":
            branches = re.findall(r"(?:true|false)_computation=%([\w.\-]+)", line) or \
                re.findall(r"%([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}",
                                                       line).group(1))
            out += max((_kernels_of(computations, b) for b in branches), key=len)
            continue
        if op not in _KERNEL_OPS:
            continue
        names = re.findall(r"%([\w.\-]+)", args)
        operands = [a for n in names for a in shapes.get(n, [])]
        kind, flops, layout = op, 0.0, ""
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            target = target.group(1) if target else "?"
            if target.startswith("__cudnn$conv"):
                kind = {"__cudnn$convForward": "cudnn conv forward",
                        "__cudnn$convBackwardInput": "cudnn conv backward-input",
                        "__cudnn$convBackwardFilter": "cudnn conv backward-filter"}.get(
                            target, "cudnn conv (fused)")
                flops = _conv_flops(line, result, operands, target)
                layout = re.search(r"dim_labels=([\w>\-]+)", line).group(1)
            elif "gemm" in target:
                kind, flops = "cublas gemm", _dot_flops(line, result, operands)
            else:
                kind = f"custom-call {target}"
        elif op == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", line)
            flops = _fusion_flops(computations, called.group(1)) if called else 0.0
            kind = "fusion (matmul)" if flops else "fusion"
        elif op.endswith("-start"):
            kind = op[:-len("-start")]
        skip = kind.startswith("cudnn") or kind == "cublas gemm"
        out.append(Kernel(inst, kind, _nbytes(operands) + _nbytes(result, skip_scratch=skip),
                          flops, result, layout))
    return out


@dataclasses.dataclass
class Counts:
    """What `count` reads off one compiled step."""

    kernels: int
    by_kind: dict
    conv_layouts: dict  # dim_labels -> count
    activation_layout_changes: int  # copies/transposes of feature maps (batch, H, W, C)
    pooled_layout_changes: int  # ... of pooled activations (batch, 1, 1, C)
    collectives: int
    collective_bytes: int
    host_transfers: int
    bytes_per_image: float
    conv_flops_per_image: float
    flops_per_image: float
    roofline_seconds: float  # per step, at the target's peaks
    images_per_sec: float  # per GPU, the roofline's bound
    temp_bytes: int
    argument_bytes: int
    largest_batch: int  # per GPU within `memory_share` of the GPU, linear in the batch


def count(compiled, target: GpuTarget, per_device_batch: int, *, precision_name: str,
          memory_share: float = 0.8) -> Counts:
    """Counts one compiled step (`compiled.train` or `.eval`) for `per_device_batch` images
    per GPU."""
    hlo = compiled.as_text()
    found = kernels(hlo)
    by_kind = collections.Counter(k.op for k in found)
    layouts = collections.Counter(k.layout for k in found if k.layout)
    relayouts = [k for k in found if k.op in ("copy", "transpose") or (
        k.op == "fusion" and "transpose" in k.name)]

    def batch_major(k, feature_map: bool) -> bool:
        # A feature map: the batch first and at least 7x7 pixels (a filter is at most 7x7,
        # and none here has as many outputs as the batch has images and 7x7 taps); a pooled
        # activation: (batch, 1, 1, channels), as Squeeze-and-Excitation's.
        return any(len(dims) == 4 and dims[0] == per_device_batch and (
            min(dims[1:3]) >= 7 if feature_map else dims[1:3] == (1, 1))
            for _, dims in k.result)

    collectives = [k for k in found if k.op in _COLLECTIVES]
    host = sum(1 for line in hlo.splitlines() if re.search(
        r"= [^=]* (" + "|".join(_HOST) + r")\(", line)) + sum(
            1 for k in found if k.op.startswith("custom-call") and any(
                word in k.op.lower() for word in _HOST_CALLBACKS))
    peak = hardware.peak_flops(target.name, precision_name) or target.dense_bf16_flops
    seconds = sum(max(k.flops / peak, k.bytes / target.memory_bandwidth) for k in found)
    memory = compiled.memory_analysis()
    temp, args = memory.temp_size_in_bytes, memory.argument_size_in_bytes
    budget = memory_share * target.memory_bytes - args
    largest = int(budget // (temp / per_device_batch)) if temp else 0
    conv = sum(k.flops for k in found if k.op.startswith("cudnn"))
    return Counts(
        kernels=len(found), by_kind=dict(by_kind.most_common()), conv_layouts=dict(layouts),
        activation_layout_changes=sum(batch_major(k, True) for k in relayouts),
        pooled_layout_changes=sum(batch_major(k, False) for k in relayouts),
        collectives=len(collectives),
        collective_bytes=sum(_nbytes(k.result) for k in collectives), host_transfers=host,
        bytes_per_image=sum(k.bytes for k in found) / per_device_batch,
        conv_flops_per_image=conv / per_device_batch,
        flops_per_image=sum(k.flops for k in found) / per_device_batch,
        roofline_seconds=seconds, images_per_sec=per_device_batch / seconds if seconds else 0.0,
        temp_bytes=temp, argument_bytes=args, largest_batch=largest)


def source_functions(hlo: str) -> set[str]:
    """The Python functions the program's instructions came from (its FunctionNames table)."""
    table = re.search(r"^FunctionNames\n((?:\d+ .*\n)*)", hlo, re.M)
    return set(re.findall(r'^\d+ "([^"]*)"', table.group(1), re.M)) if table else set()


@functools.cache
def has_cuda_compiler() -> bool:
    """Whether XLA can compile for NVIDIA GPUs here (the gpu-compile extra installed)."""
    try:
        topology_mesh(TARGETS["h100"], 1)
    except ConfigError:
        return False
    return True


# --- one row of scripts/benchmark_compiled.py ---------------------------------------------

# A per-GPU batch near NVIDIA's for each arch: MXNet's RN50 192, and 112 for SE-ResNeXt101
# (what fits beside its activations in bf16 on an 80 GB GPU with room to spare).
DEFAULT_BATCH = {"resnet50_v15": 192, "resnext101_32x4d": 112, "se_resnext101_32x4d": 112,
                 "seresnext101_32x4d": 112, "resnet_tiny": 8}


def row(arch: str, precision_name: str, target_name: str, devices: int = 1,
        per_device_batch: int | None = None, image_size: int = 224) -> dict:
    """The train and eval steps of `arch` compiled for `devices` GPUs of a target, counted."""
    batch = per_device_batch or DEFAULT_BATCH[arch]
    target = TARGETS[target_name]
    compiled = compile_steps(step_config(arch, precision_name, batch, image_size), target,
                             devices)
    train = count(compiled.train, target, batch, precision_name=precision_name)
    eval_batch = config_lib.eval_global_batch_size(compiled.config, devices) // devices
    evaluate = count(compiled.eval, target, eval_batch, precision_name=precision_name)
    published = baselines.best(arch, target.name)
    return {
        "arch": arch, "precision": precision_name, "target": target_name,
        "device_kind": target.name, "devices": devices, "per_device_batch": batch,
        "image_size": image_size, "compile_s": round(compiled.train_seconds, 1),
        "eval_compile_s": round(compiled.eval_seconds, 1), "train": dataclasses.asdict(train),
        "eval": dataclasses.asdict(evaluate),
        "published": None if published is None else {
            "images_per_sec_per_gpu": published.images_per_sec_per_gpu,
            "device": published.device, "source": published.source},
    }
