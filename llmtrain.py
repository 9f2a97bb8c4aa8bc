#!/usr/bin/env python3
"""llmtrain - a whole LLM training run, faked convincingly, in any terminal.

Like genact fakes a kernel compile, llmtrain fills the screen with a distributed LLM
training run: torchrun/NCCL start-up, a GPU grid, a falling loss, an ETA that counts down,
validation, checkpoints, a SafeTensors export and a summary. Every figure is derived from one
scenario (GPU type and count, model, method, dataset, batch, schedule), so the numbers add up,
and at --speed 1 the on-screen clock agrees with a stopwatch.

Usage:
    python3 llmtrain.py                     full-screen dashboard on a terminal, forever
    python3 llmtrain.py --plain             plain line log (the default when piped)
    python3 llmtrain.py --runs 1 --seed 7   one reproducible run
    curl -sSL URL | python3 -               straight from the web, options after "-"

Options (see --help):
    --plain  --color auto|always|never  --ascii  --seed N  --speed F  --instant  --runs N
    --exit-after 90s|5m|1h30m  --model NAME  --list-models  --gpus N
    --gpu a100-40g|a100|h100|h200|b200|mi300x  --humor off|some|max  --version

Dashboard: a header (model, method, cluster, epoch and step, run progress, elapsed and ETA,
loss, LR, tok/s, and a chart of the training loss with validation points marked), the
scrolling log with the progress line updated in place, and a grid of GPUs by node (one cell
per node, min/avg/max, when there are too many). Resize at will; below 40x12 it says so.
Keys: q (or Esc) and Ctrl-C quit. Nothing else is interactive.

Environment: NO_COLOR disables colour under --color auto. The plain log is printed instead
of the dashboard when stdout is not a terminal, there is no terminal to read keys from,
TERM is unset, empty or dumb, or curses is missing or cannot start; a TERM without a
terminfo entry here is drawn as xterm(-256color) or vt100. In a locale that is not UTF-8,
curses is switched to C.UTF-8 where it exists, else bars are drawn in ASCII (as --ascii).

Exit status: 0 after q, --runs or --exit-after; 2 for bad usage; 128+signal when killed
(130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP or a vanished terminal, 131 for SIGQUIT).

llmtrain reads no hardware, opens no socket and writes no file: it only prints.
Standard library only, Python 3.6 or newer.
"""

import argparse
import collections
import math
import os
import random
import re
import shutil
import signal
import sys
import time

__version__ = "1.0.0"


# ==========================================================================================
# Constants and limits
# ==========================================================================================

#: Pacing at --speed 1, in seconds of the run's clock (see run-notes: 2-4 minutes a run).
INIT_SECONDS = (5.0, 10.0)
SEGMENT_SECONDS = (30.0, 60.0)
VALIDATION_SECONDS = (5.0, 10.0)
CHECKPOINT_SECONDS = (3.0, 5.0)
EXPORT_SECONDS = (5.0, 10.0)
PHASE_GAP_SECONDS = (0.4, 1.5)
RUN_SECONDS = (135.0, 220.0)
#: Display updates come every 0.3-1 s; steps shorter than this are logged in groups.
UPDATE_SECONDS = (0.3, 1.0)
#: How often the GPU grid and the NCCL timing lines appear, in seconds of training.
GRID_EVERY_SECONDS = 12.0
NCCL_EVERY_SECONDS = 9.0

MAX_GPUS = 4096
DEFAULT_GPU_CHOICES = (8, 16, 16, 32, 32, 64)
GIB = float(1 << 30)
GB = 1e9
SAFETENSORS_SHARD_BYTES = 5e9
#: CUDA context, NCCL buffers and allocator slack on every GPU, in GiB.
RUNTIME_OVERHEAD_GIB = 3.2
#: The largest share of a GPU's memory a sane config plans to use.
MEMORY_HEADROOM = 0.93

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128

#: Below this size the dashboard shows a one-line "too small" notice instead of its regions.
MIN_COLUMNS = 40
MIN_ROWS = 12
#: Log lines the dashboard keeps for a taller window; older ones are dropped.
LOG_KEEP = 300
#: Seconds between redraws of each region: the header ticks, the grid follows 2 s readings,
#: the log at most 20 times a second however fast lines arrive.
HEADER_REFRESH_S = 0.5
GRID_REFRESH_S = 2.0
LOG_REFRESH_S = 0.05
#: getch() returning at once this many times in a row means the terminal is gone.
DEAD_TERMINAL_POLLS = 25


# ==========================================================================================
# Glyphs and palette
# ==========================================================================================

UNICODE_GLYPHS = {"full": "█", "empty": "░", "partial": " ▏▎▍▌▋▊▉", "spark": " ▁▂▃▄▅▆▇█",
                  "hline": "─", "vline": "│", "corners": "┌┐└┘", "val": "◆"}
ASCII_GLYPHS = {"full": "#", "empty": "-", "partial": " .:=", "spark": " .-=+*#%@",
                "hline": "-", "vline": "|", "corners": "++++", "val": "o"}

#: ANSI SGR colours per line kind: timestamps magenta, phases cyan, warnings yellow,
#: errors red, good news green (the reference palette).
ANSI = {"time": "35", "phase": "36", "warn": "33", "error": "31", "good": "32", "dim": "2",
        "bold": "1"}


# ==========================================================================================
# Data pools: the facts from realism.md
# ==========================================================================================

GPU = collections.namedtuple(
    "GPU", "key name short peak_flops capacity_gib smi_mib power_cap mfu temp idle_watts "
           "vendor")

#: Peak dense BF16 FLOP/s, capacity as torch reports it, nvidia-smi MiB, power cap, the MFU
#: band a well-tuned run reaches, and the temperature band under load.
GPUS = collections.OrderedDict((g.key, g) for g in [
    GPU("a100-40g", "NVIDIA A100-SXM4-40GB", "A100 40GB", 312e12, 39.39, 40960, 400,
        (0.40, 0.52), (55, 70), 60, "nvidia"),
    GPU("a100", "NVIDIA A100-SXM4-80GB", "A100 80GB", 312e12, 79.15, 81920, 400,
        (0.40, 0.52), (55, 70), 62, "nvidia"),
    GPU("h100", "NVIDIA H100 80GB HBM3", "H100 80GB HBM3", 989e12, 79.18, 81559, 700,
        (0.33, 0.45), (58, 76), 72, "nvidia"),
    GPU("h200", "NVIDIA H200", "H200 141GB", 989e12, 139.8, 143771, 700,
        (0.35, 0.46), (58, 76), 78, "nvidia"),
    GPU("b200", "NVIDIA B200", "B200 180GB", 2250e12, 178.4, 183359, 1000,
        (0.28, 0.38), (60, 78), 150, "nvidia"),
    GPU("mi300x", "AMD Instinct MI300X", "MI300X 192GB", 1300e12, 191.5, 196592, 750,
        (0.25, 0.35), (55, 75), 140, "amd"),
])

Model = collections.namedtuple(
    "Model", "name params active vocab layers hidden heads kv_heads ffn tokenizer lr family "
             "funny")

#: Published configurations and exact parameter counts (realism.md B4).
MODELS = [
    Model("GPT-2-XL", 1557611200, 1557611200, 50257, 48, 1600, 25, 25, 6400, "GPT-2 BPE",
          2e-4, "gpt2", False),
    Model("Llama-2-7B", 6738415616, 6738415616, 32000, 32, 4096, 32, 32, 11008,
          "Llama 2 SentencePiece", 3e-4, "llama", False),
    Model("Falcon-7B", 6921720704, 6921720704, 65024, 32, 4544, 71, 1, 18176, "Falcon BPE",
          3e-4, "falcon", False),
    Model("Mistral-7B-v0.1", 7241732096, 7241732096, 32000, 32, 4096, 32, 8, 14336,
          "Mistral SentencePiece", 3e-4, "mistral", False),
    Model("Qwen2.5-7B", 7615616512, 7615616512, 152064, 28, 3584, 28, 4, 18944, "Qwen2 BPE",
          3e-4, "qwen", False),
    Model("Llama-3.1-8B", 8030261248, 8030261248, 128256, 32, 4096, 32, 8, 14336,
          "Llama 3 tiktoken", 3e-4, "llama", False),
    Model("Gemma-2-9B", 9241705984, 9241705984, 256000, 42, 3584, 16, 8, 14336,
          "Gemma SentencePiece", 3e-4, "gemma", False),
    Model("Llama-2-13B", 13015864320, 13015864320, 32000, 40, 5120, 40, 40, 13824,
          "Llama 2 SentencePiece", 3e-4, "llama", False),
    Model("GPT-NeoX-20B", 20554567680, 20554567680, 50432, 44, 6144, 64, 64, 24576,
          "GPT-NeoX BPE", 1.2e-4, "neox", False),
    Model("Gemma-2-27B", 27227128320, 27227128320, 256000, 46, 4608, 32, 16, 36864,
          "Gemma SentencePiece", 1.5e-4, "gemma", False),
    Model("Mixtral-8x7B", 46702792704, 12879925248, 32000, 32, 4096, 32, 8, 14336,
          "Mistral SentencePiece", 3e-4, "mixtral", False),
    Model("Llama-2-70B", 68976648192, 68976648192, 32000, 80, 8192, 64, 8, 28672,
          "Llama 2 SentencePiece", 1.5e-4, "llama", False),
    Model("Llama-3.1-70B", 70553706496, 70553706496, 128256, 80, 8192, 64, 8, 28672,
          "Llama 3 tiktoken", 1.5e-4, "llama", False),
    Model("Qwen2.5-72B", 72706203648, 72706203648, 152064, 80, 8192, 64, 8, 29568,
          "Qwen2 BPE", 1.5e-4, "qwen", False),
    Model("Llama-3.1-405B", 405853388800, 405853388800, 128256, 126, 16384, 128, 8, 53248,
          "Llama 3 tiktoken", 8e-5, "llama", False),
]

#: Funny names; their sizes are read from the name like any custom model's.
FUNNY_MODEL_NAMES = ["ButtGPT-420B", "Clippy-2-70B", "GPT-Sus-69B", "ChadLlama-13B",
                     "Mistral-7B-Overthinker", "Sloth-1.1B-Procrastinate",
                     "Llama-3.1-8B-Uncaffeinated", "DadJoke-LM-34B", "Hallucinator-3B"]

Dataset = collections.namedtuple("Dataset", "name examples tokens_per_example kind funny")

#: Instruction sets (examples, typical tokens per example) and pretraining corpora (tokens).
SFT_DATASETS = [
    Dataset("databricks/databricks-dolly-15k", 15011, 330, "sft", False),
    Dataset("tatsu-lab/alpaca", 52002, 270, "sft", False),
    Dataset("yahma/alpaca-cleaned", 51760, 280, "sft", False),
    Dataset("timdettmers/openassistant-guanaco", 9846, 420, "sft", False),
    Dataset("HuggingFaceH4/ultrachat_200k", 207865, 1400, "sft", False),
    Dataset("GAIR/lima", 1030, 1700, "sft", False),
]
PRETRAIN_DATASETS = [
    Dataset("HuggingFaceFW/fineweb-edu", 0, 1.3e12, "pretrain", False),
    Dataset("cerebras/SlimPajama-627B", 0, 627e9, "pretrain", False),
    Dataset("allenai/dolma", 0, 3e12, "pretrain", False),
    Dataset("togethercomputer/RedPajama-Data-1T", 0, 1.2e12, "pretrain", False),
    Dataset("EleutherAI/pile", 0, 300e9, "pretrain", False),
]
FUNNY_DATASETS = [
    Dataset("StackOverflow-CopyPasta-2024", 48213, 310, "sft", True),
    Dataset("Reddit-Hot-Takes-Deduped", 131072, 190, "sft", True),
    Dataset("Corporate-Emails-Per-My-Last", 27500, 260, "sft", True),
    Dataset("Commit-Messages-fix-stuff", 88888, 120, "sft", True),
    Dataset("Recipe-Blogs-Life-Story-Only", 21000, 900, "sft", True),
]
FUNNY_CHECKPOINT_DIRS = ["checkpoints/big-chungus-epoch-{epoch}", "checkpoints/please-converge",
                         "checkpoints/final-final-v2-epoch-{epoch}", "checkpoints/yolo-run",
                         "checkpoints/do-not-delete-epoch-{epoch}"]

METHOD_TITLES = {"full": "Full fine-tune", "lora": "LoRA (r=16, alpha=32, all linear layers)",
                 "qlora": "QLoRA (4-bit NF4, r=64, alpha=16)", "pretrain": "Pretraining"}
LORA_RANK = {"lora": 16, "qlora": 64}


# ==========================================================================================
# The simulation: a scenario and the pure functions that derive every figure from it
# ==========================================================================================

class ScenarioError(ValueError):
    """The requested combination cannot run (e.g. the model fits on no method)."""


def parse_size(name):
    """Parameters announced by a model name such as 'acme-13B' or 'tiny-350M', else None."""
    found = re.findall(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z])", name)
    if not found:
        return None
    number, unit = found[-1]
    return int(float(number) * (1e9 if unit in "Bb" else 1e6))


def llama_params(vocab, layers, hidden, kv_heads, head_dim, ffn):
    """Exact parameter count of a Llama-shaped decoder with untied embeddings."""
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    per_layer = attention + 3 * hidden * ffn + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def synth_model(name, target_params, funny=False):
    """A Llama-shaped config whose exact parameter count lands near target_params."""
    vocab = 32000 if target_params < 3e9 else 128256
    best = None
    for hidden in range(512, 32768 + 1, 256):
        heads = max(1, hidden // 128)
        kv_heads = 8 if heads % 8 == 0 else heads
        ffn = int(math.ceil(hidden * 8 / 3 / 256.0)) * 256
        per_layer = llama_params(vocab, 1, hidden, kv_heads, 128, ffn) - 2 * vocab * hidden
        layers = int(round((target_params - 2 * vocab * hidden) / float(per_layer)))
        if layers < 4 or layers > 4 * hidden // 128:
            continue
        params = llama_params(vocab, layers, hidden, kv_heads, 128, ffn)
        score = abs(params - target_params) / target_params + abs(layers - hidden / 128.0) / 400
        if best is None or score < best[0]:
            best = (score, Model(name, params, params, vocab, layers, hidden, heads, kv_heads,
                                 ffn, "Llama 2 SentencePiece" if vocab == 32000
                                 else "Llama 3 tiktoken", 3e-4, "custom", funny))
    if best is None:
        raise ScenarioError("cannot build a model of %s parameters" % format(target_params, ","))
    return best[1]


def find_model(name):
    """The listed model of that name (case-insensitive), or a custom one sized from its name."""
    for model in MODELS:
        if model.name.lower() == name.lower():
            return model
    size = parse_size(name)
    if size is None or size < 50e6 or size > 2e12:
        raise ScenarioError("unknown model %r: give a listed name (--list-models) or a size "
                            "in the name, e.g. acme-13B" % name)
    return synth_model(name, size, funny=name in FUNNY_MODEL_NAMES)


def cluster_shape(gpus):
    """(nodes, gpus_per_node): 8 per node where possible, as HGX/OAM boxes have."""
    for per_node in (8, 4, 2, 1):
        if gpus % per_node == 0 and (gpus <= 8 or per_node >= 2 or gpus < 16):
            return gpus // per_node, per_node
    return gpus, 1


def flops_per_token(model, seq_len, method):
    """Training FLOPs per token: 6N (4N without weight gradients) plus attention."""
    weight_flops = (4 if method in ("lora", "qlora") else 6) * model.active
    return weight_flops + 12 * model.layers * model.hidden * seq_len


def lora_params(model, rank):
    """Adapter parameters for LoRA on every linear layer of every block."""
    head_dim = model.hidden // model.heads
    kv_width = model.kv_heads * head_dim
    per_layer = (2 * model.hidden) * 2 + (model.hidden + kv_width) * 2 \
        + 3 * (model.hidden + model.ffn)
    return rank * per_layer * model.layers


def state_bytes_per_gpu(model, method, strategy, gpus, tp, pp):
    """Weights, gradients and optimizer state on one GPU (realism.md B3)."""
    n = float(model.params)
    if method == "pretrain":
        dp = gpus // (tp * pp)
        return (6 + 12.0 / dp) * n / (tp * pp)
    if method == "full":
        if strategy == "DDP":
            return 16 * n
        if strategy == "DeepSpeed ZeRO-2":
            return 2 * n + 14 * n / gpus
        return 16 * n / gpus
    adapters = 16.0 * lora_params(model, LORA_RANK[method])
    base = 2 * n if method == "lora" else 0.56 * n
    if strategy.startswith("FSDP"):
        base /= gpus
    return base + adapters


def activation_bytes(model, micro_batch, seq_len, tp, pp):
    """Checkpointed activations, one layer's recompute and fp32 logits for one micro-batch."""
    tokens = micro_batch * seq_len
    layers_here = int(math.ceil(model.layers / float(pp)))
    saved = 2.0 * tokens * model.hidden * layers_here
    recompute = 34.0 * tokens * model.hidden / tp
    logits = 8.0 * tokens * model.vocab / tp if pp == 1 else 0.0
    return saved + recompute + logits


def memory_gib(model, method, strategy, gpus, tp, pp, micro_batch, seq_len):
    """Reserved memory per GPU in GiB: state + activations + runtime overhead."""
    total = state_bytes_per_gpu(model, method, strategy, gpus, tp, pp) \
        + activation_bytes(model, micro_batch, seq_len, tp, pp)
    return total / GIB + RUNTIME_OVERHEAD_GIB


def parallel_layout(model, method, gpu, gpus, per_node):
    """(tp, pp) for a pretraining job: tensor parallel inside a node, pipeline across."""
    if method != "pretrain":
        return 1, 1
    tp = 1
    pp = 1
    while memory_gib(model, method, "", gpus, tp, pp, 1, 4096) > MEMORY_HEADROOM * \
            gpu.capacity_gib:
        if tp < min(8, per_node):
            tp *= 2
        elif pp < 32 and gpus % (tp * pp * 2) == 0:
            pp *= 2
        else:
            return None
        if gpus % (tp * pp):
            return None
    return tp, pp


def strategy_options(model, method, gpus):
    """Sharding strategies a sensible engineer would pick for this method."""
    if method == "pretrain":
        return ["3D"]
    if gpus == 1:
        return ["single GPU"]
    if method == "full":
        return ["FSDP (FULL_SHARD)", "DeepSpeed ZeRO-3", "DeepSpeed ZeRO-2", "DDP"]
    if method == "lora":
        return ["DDP", "FSDP (FULL_SHARD)"]
    return ["DDP"]


def best_micro_batch(model, method, strategy, gpu, gpus, tp, pp, seq_len):
    """Largest power-of-two micro-batch that fits; 0 when even one sequence does not."""
    micro = 0
    for candidate in (1, 2, 4, 8, 16):
        if memory_gib(model, method, strategy, gpus, tp, pp, candidate, seq_len) \
                <= MEMORY_HEADROOM * gpu.capacity_gib:
            micro = candidate
    return micro


class Scenario(object):
    """Everything drawn for one run; every figure on screen is derived from these fields."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    # --- derived figures: one place each ---------------------------------------------
    @property
    def tokens_per_step(self):
        return self.global_batch * self.seq_len

    @property
    def step_seconds(self):
        return self.tokens_per_step / float(self.cluster_tokens_per_s)

    @property
    def samples_per_s(self):
        return self.cluster_tokens_per_s / float(self.seq_len)

    @property
    def tflops_per_gpu(self):
        return self.flops_per_token * self.cluster_tokens_per_s / self.gpus / 1e12

    @property
    def cluster_name(self):
        return "%d x %s, %d node%s" % (self.gpus, self.gpu.short, self.nodes,
                                       "" if self.nodes == 1 else "s")


def lr_at(sc, step):
    """Learning rate after optimizer step `step` (1-based, counted over the whole job)."""
    if step <= sc.warmup_steps:
        lr = sc.peak_lr * step / float(max(1, sc.warmup_steps))
    else:
        progress = (step - sc.warmup_steps) / float(max(1, sc.total_steps - sc.warmup_steps))
        progress = min(1.0, progress)
        if sc.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        lr = sc.min_lr + (sc.peak_lr - sc.min_lr) * shape
    return lr * lr_scale_at(sc, step)


def lr_scale_at(sc, step):
    """Product of the LR reductions announced at or before this step."""
    scale = 1.0
    for event in sc.events:
        if event.kind == "spike" and event.step < step:
            scale *= 0.5
    return scale


def expected_loss(sc, step):
    """Noise-free training loss after `step` optimizer steps of the whole job."""
    if sc.loss_curve == "sft":
        within = step - (sc.epoch_of(step) - 1) * sc.steps_per_epoch
        fast = (sc.loss_start - sc.loss_plateau) * math.exp(-step / sc.loss_tau)
        drift = -0.10 * within / float(sc.steps_per_epoch)
        stairs = -sc.epoch_drop * (sc.epoch_of(step) - 1)
        return sc.loss_plateau + fast + drift + stairs
    if sc.loss_curve == "fresh":
        tokens = step * sc.tokens_per_step
        plateau = 1.0 if step < 6 else 1.0 / (1.0 + ((tokens - 5 * sc.tokens_per_step)
                                                     / sc.loss_tokens_half) ** 0.75)
        return sc.loss_floor + (sc.loss_start - sc.loss_floor) * plateau
    # A resumed pretraining job: a slow power-law decline in tokens seen.
    tokens = float(step) * sc.tokens_per_step
    return sc.loss_floor + sc.loss_scale / tokens ** 0.28


def spike_boost(sc, step):
    """Extra loss from any spike before `step`, decaying over ~25 steps."""
    boost = 0.0
    for event in sc.events:
        if event.kind == "spike" and step >= event.step:
            boost += event.size * math.exp(-(step - event.step) / 6.0)
    return boost


Event = collections.namedtuple("Event", "kind step size extra_s")


def plan_events(rng, sc):
    """Rare events for this run (each recovers and the run goes on), with the time they cost."""
    kinds = ["spike", "nan", "oom", "nccl"]
    if sc.precision == "fp16":
        kinds.append("overflow")
    lo = sc.first_step + max(3, sc.session_steps // 8)
    hi = sc.last_step - max(3, sc.session_steps // 8)
    events = []
    if sc.precision == "fp16" and sc.first_step == 1:
        # Dynamic loss scaling overshoots a few times at the very start.
        events += [Event("overflow", step, 0.0, 0.0) for step in (1, 2, 3)]
    used = set()
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        kind = rng.choice(kinds)
        if kind in used or hi <= lo:
            continue
        used.add(kind)
        step = rng.randint(lo, hi)
        if kind == "spike":
            events.append(Event(kind, step, rng.uniform(0.3, 0.9), 0.0))
        elif kind == "oom":
            events.append(Event(kind, step, 0.0, round(sc.step_seconds + rng.uniform(0.8, 1.6),
                                                       2)))
        elif kind == "nccl":
            events.append(Event(kind, step, 0.0, round(rng.uniform(1.5, 3.0), 2)))
        else:
            events.append(Event(kind, step, 0.0, 0.0))
    events.sort(key=lambda e: e.step)
    return events


Segment = collections.namedtuple(
    "Segment", "index epoch first_step last_step updates validation_s checkpoint_s gap_s")


def segment_updates(sc, first, last):
    """Display updates for steps first..last as (step, micro, seconds): 0.3-1 s apart."""
    updates = []
    if sc.micro_updates > 1:
        for step in range(first, last + 1):
            for micro in range(1, sc.micro_updates + 1):
                updates.append((step, micro, sc.step_seconds / sc.micro_updates))
        return updates
    step = first - 1
    while step < last:
        nxt = min(last, step + sc.log_every)
        updates.append((nxt, 0, (nxt - step) * sc.step_seconds))
        step = nxt
    return updates


def plan_timeline(rng, sc):
    """Durations of every phase, fixed up front so the ETA can be exact."""
    sc.init_s = rng.uniform(*INIT_SECONDS)
    sc.segments = []
    for index in range(sc.segment_count):
        first = sc.first_step + index * sc.eval_every
        last = min(sc.last_step, first + sc.eval_every - 1)
        sc.segments.append(Segment(index, sc.epoch_of(last), first, last,
                                   segment_updates(sc, first, last),
                                   rng.uniform(*VALIDATION_SECONDS),
                                   rng.uniform(*CHECKPOINT_SECONDS),
                                   rng.uniform(*PHASE_GAP_SECONDS)))
    sc.export_s = rng.uniform(*EXPORT_SECONDS)
    sc.start_gap_s = rng.uniform(*PHASE_GAP_SECONDS)
    # Whole epochs come in whole steps: lengthen the fixed phases if the run fell short.
    short = 2 * 60.0 + 3 - run_seconds(sc)
    if short > 0:
        sc.init_s = min(INIT_SECONDS[1], sc.init_s + short / 3)
        sc.export_s = min(EXPORT_SECONDS[1], sc.export_s + short / 3)
        share = (2 * 60.0 + 3 - run_seconds(sc)) / len(sc.segments)
        sc.segments = [seg._replace(validation_s=min(VALIDATION_SECONDS[1],
                                                     seg.validation_s + share))
                       for seg in sc.segments]


def training_seconds(sc):
    """Planned length of the training loop: steps, event stalls, validation, checkpoints."""
    total = 0.0
    for seg in sc.segments:
        total += sum(u[2] for u in seg.updates) + seg.validation_s + seg.checkpoint_s \
            + seg.gap_s
    return total + sum(e.extra_s for e in sc.events)


def run_seconds(sc):
    """Planned length of the whole run at --speed 1."""
    return sc.init_s + sc.start_gap_s + training_seconds(sc) + sc.export_s + 1.0


def pick_method(rng, model, gpu, gpus, pretrain):
    """A method, strategy and (tp, pp) under which the model fits; None if nothing does."""
    nodes, per_node = cluster_shape(gpus)
    methods = ["pretrain"] if pretrain else ["full", "full", "lora", "qlora"]
    order = []
    while methods:
        pick = rng.choice(methods)
        methods = [m for m in methods if m != pick]
        order.append(pick)
    if not pretrain:
        order += [m for m in ("lora", "qlora") if m not in order]
    for method in order:
        layout = parallel_layout(model, method, gpu, gpus, per_node)
        if layout is None:
            continue
        strategies = strategy_options(model, method, gpus)
        first = rng.choice(strategies)
        for strategy in [first] + [s for s in strategies if s != first]:
            seq_len = 4096 if method == "pretrain" else 512
            if best_micro_batch(model, method, strategy, gpu, gpus, layout[0], layout[1],
                                seq_len):
                return method, strategy, layout
    return None


def smallest_cluster(model, gpu, pretrain):
    """Fewest GPUs (powers of two) on which some method fits this model."""
    gpus = 1
    while gpus <= MAX_GPUS:
        if pick_method(random.Random(0), model, gpu, gpus, pretrain) is not None:
            return gpus
        gpus *= 2
    return None


def build_scenario(seed, model_name=None, gpus=None, gpu_key=None, humor="some"):
    """Draw one whole run from the seed. Raises ScenarioError for impossible requests."""
    rng = random.Random(seed)

    def funny(probability):
        return humor == "max" or (humor == "some" and rng.random() < probability)

    gpu = GPUS[gpu_key] if gpu_key else rng.choice(
        [GPUS[k] for k in ("h100", "h100", "h100", "a100", "a100", "h200", "b200", "a100-40g",
                           "mi300x")])
    if model_name:
        model = find_model(model_name)
    elif funny(0.12):
        model = find_model(rng.choice(FUNNY_MODEL_NAMES))
    else:
        model = rng.choice(MODELS)
    if gpus:
        gpu_count = gpus
        pretrain = gpus >= 256
    else:
        # The largest models only train honestly at scale: the tail of a pretraining job.
        pretrain = model.params > 100e9 or rng.random() < 0.2
        gpu_count = pretraining_gpus(model, gpu) if pretrain else \
            rng.choice(DEFAULT_GPU_CHOICES)
    picked = pick_method(rng, model, gpu, gpu_count, pretrain)
    if picked is None and gpus is None:
        need = smallest_cluster(model, gpu, pretrain)
        if need is None:
            raise ScenarioError("%s fits on no %s cluster of up to %d GPUs" % (
                model.name, gpu.name, MAX_GPUS))
        gpu_count = max(gpu_count, need)
        picked = pick_method(rng, model, gpu, gpu_count, pretrain)
    if picked is None and pretrain:
        pretrain = False
        picked = pick_method(rng, model, gpu, gpu_count, pretrain)
    if picked is None:
        raise ScenarioError("%s does not fit on %d x %s, not even with QLoRA" % (
            model.name, gpu_count, gpu.name))
    method, strategy, (tp, pp) = picked
    nodes, per_node = cluster_shape(gpu_count)
    if method == "pretrain":
        strategy = "Megatron 3D parallel (TP=%d, PP=%d, DP=%d), distributed optimizer" % (
            tp, pp, gpu_count // (tp * pp))
    sc = Scenario(seed=seed, gpu=gpu, gpus=gpu_count, nodes=nodes, per_node=per_node,
                  model=model, method=method, strategy=strategy, tp=tp, pp=pp,
                  dp=gpu_count // (tp * pp), humor=humor)
    sc.precision = "fp16" if gpu.key.startswith("a100") and rng.random() < 0.25 else "bf16"
    sc.mfu = rng.uniform(*gpu.mfu)
    if method in ("lora", "qlora"):
        sc.mfu *= 0.75 if method == "lora" else 0.6
    if method == "pretrain":
        plan_pretraining(rng, sc)
    else:
        plan_finetune(rng, sc, funny)
    sc.session_steps = sc.last_step - sc.first_step + 1
    sc.checkpoint_root = checkpoint_root(rng, sc, funny)
    sc.events = plan_events(rng, sc)
    plan_timeline(rng, sc)
    sc.hosts = host_names(rng, sc)
    sc.master_port = rng.choice([29500, 29500, 29400, 6000, 23456])
    return sc


def pretraining_batch_tokens(model):
    """Tokens per optimizer step a pretraining job of this size uses (realism.md B5)."""
    if model.params < 3e9:
        return 0.5e6
    if model.params < 20e9:
        return 2e6
    if model.params < 100e9:
        return 4e6
    return 8e6


def pretraining_gpus(model, gpu):
    """Smallest power-of-two cluster (64 or more) that fits the job with steps of <= 8 s."""
    per_gpu = 0.4 * gpu.peak_flops / flops_per_token(model, 4096, "pretrain")
    gpus = 64
    while gpus < MAX_GPUS and (
            parallel_layout(model, "pretrain", gpu, gpus, 8) is None or
            pretraining_batch_tokens(model) / (per_gpu * gpus) > 8.0):
        gpus *= 2
    return gpus


def set_throughput(sc, seq_len):
    """Tokens per second for the cluster from FLOPs per token and the drawn MFU."""
    sc.seq_len = seq_len
    sc.flops_per_token = flops_per_token(sc.model, seq_len, sc.method)
    sc.cluster_tokens_per_s = int(round(sc.mfu * sc.gpu.peak_flops / sc.flops_per_token
                                        * sc.gpus))


def set_batch(sc, target_step_s, min_accum=1):
    """Micro-batch by memory, accumulation by the step time wanted, updates 0.3-1 s apart."""
    sc.micro_batch = best_micro_batch(sc.model, sc.method, sc.strategy, sc.gpu, sc.gpus,
                                      sc.tp, sc.pp, sc.seq_len)
    if sc.micro_batch == 0:
        raise ScenarioError("%s does not fit at sequence length %d" % (sc.model.name,
                                                                        sc.seq_len))
    micro_step_s = sc.dp * sc.seq_len / float(sc.cluster_tokens_per_s)
    while sc.micro_batch > 1 and sc.micro_batch * min_accum * micro_step_s > target_step_s:
        sc.micro_batch //= 2
    # Long steps are shown micro-step by micro-step: keep each one under a second.
    while sc.micro_batch > 1 and target_step_s > UPDATE_SECONDS[1] and \
            sc.micro_batch * micro_step_s > 0.8:
        sc.micro_batch //= 2
    sc.grad_accum = max(min_accum, int(round(target_step_s / (sc.micro_batch * micro_step_s))))
    sc.global_batch = sc.micro_batch * sc.grad_accum * sc.dp
    sc.memory_gib = memory_gib(sc.model, sc.method, sc.strategy, sc.gpus, sc.tp, sc.pp,
                               sc.micro_batch, sc.seq_len)
    sc.log_every = max(1, int(math.ceil(UPDATE_SECONDS[0] / sc.step_seconds)))
    sc.micro_updates = 1
    if sc.step_seconds > UPDATE_SECONDS[1]:
        sc.micro_updates = min(sc.grad_accum, int(math.ceil(sc.step_seconds / 0.8)))


def segment_target(rng, segments):
    """Seconds of training per segment so that the whole run lands inside RUN_SECONDS."""
    fixed = (sum(INIT_SECONDS) + sum(EXPORT_SECONDS)) / 2 + segments * (
        (sum(VALIDATION_SECONDS) + sum(CHECKPOINT_SECONDS) + sum(PHASE_GAP_SECONDS)) / 2)
    lo = max(SEGMENT_SECONDS[0], (RUN_SECONDS[0] - fixed) / segments)
    hi = min(SEGMENT_SECONDS[1], (RUN_SECONDS[1] - fixed) / segments)
    return rng.uniform(lo, max(lo, hi))


def epochs_for(rng, epoch_s, wanted):
    """2 or 3 epochs, whichever keeps the run inside RUN_SECONDS (the wanted one if both)."""
    def fits(epochs):
        fixed = (sum(INIT_SECONDS) + sum(EXPORT_SECONDS)) / 2 + epochs * (
            (sum(VALIDATION_SECONDS) + sum(CHECKPOINT_SECONDS) + sum(PHASE_GAP_SECONDS)) / 2)
        return RUN_SECONDS[0] <= fixed + epochs * epoch_s <= RUN_SECONDS[1]
    if fits(wanted):
        return wanted
    return 3 if fits(3) or epoch_s < 45 else 2


def epoch_seconds(sc, dataset, examples):
    """Seconds for one epoch over `examples` of the dataset, packed to the sequence length."""
    steps = examples * dataset.tokens_per_example // sc.seq_len // sc.global_batch
    return steps * sc.step_seconds


def plan_finetune(rng, sc, funny):
    """Epochs over an instruction set; a subset when the set is too big for 30-60 s epochs,
    or the last stretch of a long fine-tune when one step is too slow for that."""
    sc.loss_curve = "sft"
    sc.instruction_set = True
    sc.peak_lr = rng.choice([1e-5, 2e-5, 2e-5]) if sc.method == "full" else \
        rng.choice([1e-4, 2e-4])
    sc.min_lr = 0.0
    sc.schedule = rng.choice(["cosine", "cosine", "linear"])
    seq_len = 2048
    set_throughput(sc, seq_len)
    while seq_len > 512 and sc.dp * seq_len / float(sc.cluster_tokens_per_s) > 0.45:
        seq_len //= 2
        set_throughput(sc, seq_len)
    set_batch(sc, rng.uniform(0.35, 0.9))
    sc.epochs = rng.choice([2, 3, 3])
    target_s = segment_target(rng, sc.epochs)
    pool = FUNNY_DATASETS if funny(0.15) else SFT_DATASETS
    usable = [d for d in pool if epoch_seconds(sc, d, d.examples) >= SEGMENT_SECONDS[0]]
    sc.dataset = rng.choice(usable or [max(pool, key=lambda d: d.examples *
                                           d.tokens_per_example)])
    sc.examples = sc.dataset.examples
    if epoch_seconds(sc, sc.dataset, sc.examples) > SEGMENT_SECONDS[1]:
        steps = max(1, int(round(target_s / sc.step_seconds)))
        tokens = (steps * sc.global_batch + 1) * sc.seq_len
        sc.examples = min(sc.examples,
                          int(math.ceil(tokens / float(sc.dataset.tokens_per_example))))
    sc.packed_samples = sc.examples * sc.dataset.tokens_per_example // sc.seq_len
    sc.steps_per_epoch = max(1, sc.packed_samples // sc.global_batch)
    sc.epochs = epochs_for(rng, sc.steps_per_epoch * sc.step_seconds, sc.epochs)
    sc.total_steps = sc.steps_per_epoch * sc.epochs
    sc.warmup_steps = int(math.ceil(0.03 * sc.total_steps))
    sc.last_step = sc.total_steps
    sc.val_samples = max(64, sc.dataset.examples // 50)
    sc.loss_start = rng.uniform(1.5, 2.5)
    sc.loss_plateau = rng.uniform(1.0, 1.4)
    sc.loss_tau = rng.uniform(6, 15) * max(1.0, sc.steps_per_epoch / 60.0)
    sc.epoch_drop = rng.uniform(0.10, 0.22)
    sc.noise = min(0.05, 0.03 * math.sqrt(1e6 / sc.tokens_per_step))
    sc.grad_norm_start = rng.uniform(1.5, 3.0) if sc.method == "full" else rng.uniform(0.8, 2)
    sc.grad_norm_end = rng.uniform(0.3, 0.9)
    if sc.steps_per_epoch >= 12 and epoch_seconds(sc, sc.dataset, sc.examples) <= \
            SEGMENT_SECONDS[1] * 1.05:
        sc.first_step = 1
        sc.eval_every = sc.steps_per_epoch
        sc.segment_count = sc.epochs
        sc.resumed_seconds = 0.0
        return
    # One step is too slow for whole epochs in a minute: show the end of a long fine-tune.
    sc.examples = sc.dataset.examples
    sc.packed_samples = sc.examples * sc.dataset.tokens_per_example // sc.seq_len
    sc.steps_per_epoch = max(8, sc.packed_samples // sc.global_batch)
    sc.total_steps = sc.steps_per_epoch * sc.epochs
    sc.warmup_steps = int(math.ceil(0.03 * sc.total_steps))
    sc.last_step = sc.total_steps
    plan_final_stretch(rng, sc)


def plan_final_stretch(rng, sc):
    """The session is the last 2-3 evaluation intervals of a job resumed from a checkpoint."""
    sc.segment_count = rng.choice([2, 3])
    target_s = segment_target(rng, sc.segment_count)
    sc.eval_every = max(1, int(round(target_s / sc.step_seconds)))
    session = min(sc.total_steps - 1, sc.eval_every * sc.segment_count)
    sc.eval_every = max(1, session // sc.segment_count)
    sc.first_step = sc.last_step - sc.eval_every * sc.segment_count + 1
    # Restarts, evaluations and checkpoints cost a few percent of wall time on long jobs.
    sc.resumed_seconds = (sc.first_step - 1) * sc.step_seconds * rng.uniform(1.03, 1.08)


def plan_pretraining(rng, sc):
    """A pretraining job: small models from scratch, big ones resumed near the end."""
    model = sc.model
    sc.loss_curve = "pretrain"
    sc.instruction_set = False
    sc.dataset = rng.choice(PRETRAIN_DATASETS)
    sc.epochs = 1
    sc.schedule = "cosine"
    sc.peak_lr = model.lr
    sc.min_lr = model.lr / 10.0
    set_throughput(sc, 8192 if model.vocab == 128256 else 4096)
    # The batch is the job's; on a cluster too small for it, fewer tokens per step.
    target_tokens = min(pretraining_batch_tokens(model), 8.0 * sc.cluster_tokens_per_s)
    set_batch(sc, target_tokens / sc.cluster_tokens_per_s, min_accum=sc.pp)
    sc.noise = min(0.05, 0.036 * math.sqrt(1.6e6 / sc.tokens_per_step))
    vocab_excess = 0.25 * math.log(model.vocab / 32000.0)
    sc.loss_floor = 1.69 + 406.4 / model.active ** 0.34 + vocab_excess
    sc.loss_scale = 410.7
    if model.params < 3e9 and sc.gpus <= 64:
        # A from-scratch speedrun: the whole job is this session.
        sc.loss_curve = "fresh"
        sc.segment_count = rng.choice([2, 3])
        target_s = segment_target(rng, sc.segment_count)
        sc.eval_every = max(1, int(round(target_s / sc.step_seconds)))
        sc.total_steps = sc.eval_every * sc.segment_count
        sc.steps_per_epoch = sc.total_steps
        sc.warmup_steps = max(1, int(math.ceil(0.05 * sc.total_steps)))
        sc.first_step = 1
        sc.last_step = sc.total_steps
        sc.resumed_seconds = 0.0
        sc.loss_start = math.log(model.vocab) + rng.uniform(0.1, 1.0)
        sc.loss_floor = rng.uniform(3.3, 4.2)
        sc.loss_tokens_half = sc.total_steps * sc.tokens_per_step / 8.0
        sc.grad_norm_start = rng.uniform(10, 30)
        sc.grad_norm_end = rng.uniform(0.4, 1.0)
    else:
        tokens_per_param = rng.uniform(20, 150)
        job_tokens = min(sc.dataset.tokens_per_example, tokens_per_param * model.params)
        sc.total_steps = max(2000, int(job_tokens // sc.tokens_per_step))
        sc.steps_per_epoch = sc.total_steps
        sc.warmup_steps = 2000
        sc.last_step = sc.total_steps
        plan_final_stretch(rng, sc)
        sc.grad_norm_start = rng.uniform(0.25, 0.5)
        sc.grad_norm_end = sc.grad_norm_start
    sc.val_samples = 0


def checkpoint_root(rng, sc, funny):
    """Where checkpoints go: a sensible run directory, or a silly one under --humor."""
    if funny(0.2):
        return rng.choice(FUNNY_CHECKPOINT_DIRS)
    slug = "%s-%s" % (sc.model.name.lower(), sc.dataset.name.split("/")[-1].lower())
    suffix = {"full": "sft", "lora": "lora", "qlora": "qlora", "pretrain": "pretrain"}
    return "checkpoints/%s-%s" % (slug, suffix[sc.method])


def host_names(rng, sc):
    """Node host names and the master's address, stable for the whole run."""
    prefix = rng.choice(["node", "gpu", "hgx", "dgx", "compute"])
    first = rng.randint(1, 40) * 8
    width = 3 if sc.nodes < 1000 else 4
    names = ["%s%0*d" % (prefix, width, first + i) for i in range(sc.nodes)]
    return names


def scenario_epoch_of(sc, step):
    """Epoch (1-based) that optimizer step `step` belongs to."""
    return min(sc.epochs, max(1, (step - 1) // sc.steps_per_epoch + 1))


Scenario.epoch_of = scenario_epoch_of


def loss_at(sc, step, noise_rng):
    """Observed training loss at a step: expected curve, a spike if any, noise."""
    value = expected_loss(sc, step) + spike_boost(sc, step)
    return max(0.05, value + noise_rng.gauss(0.0, sc.noise))


def grad_norm_at(sc, step, noise_rng):
    """Gradient norm: large early, settling, spiking together with the loss."""
    progress = (step - 1) / float(max(1, sc.total_steps))
    base = sc.grad_norm_end + (sc.grad_norm_start - sc.grad_norm_end) * math.exp(
        -progress * 25.0)
    base *= 1.0 + 6.0 * spike_boost(sc, step)
    return base * math.exp(noise_rng.gauss(0.0, 0.08))


def val_loss_at(sc, step, noise_rng):
    """Validation loss: near train loss for pretraining; above it in later SFT epochs."""
    expected = expected_loss(sc, step)
    if sc.loss_curve == "sft":
        epoch = sc.epoch_of(step)
        # Later epochs memorise: train loss steps down, validation loss barely moves.
        gap = 0.04 + (sc.epoch_drop + 0.10) * 0.95 * (epoch - 1)
        return expected + gap + noise_rng.gauss(0.0, 0.01)
    return expected + 0.01 + noise_rng.gauss(0.0, 0.005)


def token_accuracy(loss):
    """Next-token accuracy that goes with a loss (higher loss, lower accuracy)."""
    return max(0.05, min(0.97, 0.93 - 0.175 * loss))


def checkpoint_bytes(sc):
    """(model bytes, optimizer bytes) of one resumable checkpoint."""
    if sc.method in ("lora", "qlora"):
        adapters = lora_params(sc.model, LORA_RANK[sc.method])
        return 2 * adapters, 12 * adapters
    return 2 * sc.model.params, 12 * sc.model.params


def export_bytes(sc):
    """Bytes of the exported weights: bf16 model, or just the adapters for LoRA/QLoRA."""
    if sc.method in ("lora", "qlora"):
        return 2 * lora_params(sc.model, LORA_RANK[sc.method])
    return 2 * sc.model.params


def export_files(sc):
    """File names of the export, as transformers/PEFT name them."""
    if sc.method in ("lora", "qlora"):
        return ["adapter_model.safetensors"]
    shards = int(math.ceil(export_bytes(sc) / SAFETENSORS_SHARD_BYTES))
    if shards == 1:
        return ["model.safetensors"]
    return ["model-%05d-of-%05d.safetensors" % (i, shards) for i in range(1, shards + 1)]


# ==========================================================================================
# Run state and phases: generators yielding (line, delay); a line of None is a pause
# ==========================================================================================

Line = collections.namedtuple("Line", "text kind tag")


def line(text, kind="info", tag=""):
    return Line(text, kind, tag)


class RunState(object):
    """What the run shows right now; phases update it, renderers only read it."""

    def __init__(self, sc):
        self.sc = sc
        self.clock = 0.0
        self.phase = "init"
        self.epoch = sc.epoch_of(sc.first_step)
        self.step = sc.first_step - 1
        self.micro = 0
        self.loss = None
        self.loss_text = ""
        self.lr = 0.0
        self.grad_norm = None
        self.tokens_per_s = 0.0
        self.mem_gib = 0.0
        self.load = 0.0
        self.heat = 0.0
        self.train_end = None
        self.loss_history = []
        self.val_history = []
        self.tokens_trained = 0
        self.checkpoints = 0
        self.skipped = 0
        self.loss_scale = 65536.0
        self.pacing_rng = random.Random(sc.seed)

    @property
    def eta(self):
        """Seconds left in the training loop (steps, validations, checkpoints)."""
        if self.train_end is None:
            return None
        return max(0.0, self.train_end - self.clock)

    @property
    def progress(self):
        """Share of this session's training steps done, micro-steps included."""
        sc = self.sc
        done = self.step - sc.first_step + 1
        if sc.micro_updates > 1 and self.micro:
            done += self.micro / float(sc.micro_updates)
        return max(0.0, min(1.0, done / float(sc.session_steps)))

    def warm_towards(self, load, seconds):
        """GPU temperatures follow load with a time constant of about 8 s."""
        self.load = load
        self.heat += (load - self.heat) * (1.0 - math.exp(-seconds / 8.0))


def paced(lines, seconds, pacing_rng):
    """Spread `seconds` over lines with bursts and pauses: most lines come quickly.
    Its own random stream, so a style with more or fewer lines draws the same numbers."""
    weights = [pacing_rng.choice([0.2, 0.3, 0.5, 1.0, 1.0, 2.5]) for _ in lines]
    total = sum(weights)
    for item, weight in zip(lines, weights):
        yield item, seconds * weight / total


def fmt_int(value):
    return "{:,}".format(int(value))


def fmt_duration(seconds):
    """H:MM:SS, with days in front for jobs longer than a day."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    text = "%d:%02d:%02d" % (rest // 3600, rest % 3600 // 60, rest % 60)
    return ("%dd %s" % (days, text)) if days else text


def fmt_eta(seconds):
    """MM:SS under an hour, H:MM:SS above, as tqdm prints it."""
    seconds = int(math.ceil(seconds))
    if seconds >= 3600:
        return fmt_duration(seconds)
    return "%02d:%02d" % (seconds // 60, seconds % 60)


def fmt_bytes(count):
    return "%.2f GB" % (count / GB) if count >= 1e8 else "%.1f MB" % (count / 1e6)


def fmt_params(count):
    return "%.1fB" % (count / 1e9) if count >= 1e9 else "%dM" % int(round(count / 1e6))


def software_stack(sc):
    """One coherent set of versions for the whole run."""
    if sc.gpu.vendor == "amd":
        return {"torch": "2.5.1+rocm6.2", "collective": "RCCL", "nccl": "2.20.5", "cuda": "6.2",
                "runtime": "ROCm"}
    return {"torch": "2.5.1+cu124", "collective": "NCCL", "nccl": "2.21.5", "cuda": "12.4",
            "runtime": "CUDA"}


def master_address(sc):
    """The rendezvous host and its address on the management network."""
    return sc.hosts[0], "10.%d.%d.%d" % (sc.seed % 7 + 1, sc.seed % 200, 11)


def init_phase(sc, state, rng):
    """Distributed start-up, model, tokenizer, data and configuration; ends 'Ready to train!'."""
    tag = "INIT"
    stack = software_stack(sc)
    host, address = master_address(sc)
    coll = stack["collective"]
    model = sc.model
    lines = [
        line("Initializing distributed environment (torchrun, rdzv_backend=c10d, "
             "torch %s)" % stack["torch"], "phase", tag),
        line("%s backend: %s version %s+%s%s, %d GPUs across %d node%s" % (
            coll, coll, stack["nccl"], stack["runtime"].lower(), stack["cuda"], sc.gpus,
            sc.nodes, "" if sc.nodes == 1 else "s"), tag=tag),
        line("Master node: %s (%s), port %d, world size %d" % (
            host, address, sc.master_port, sc.gpus), tag=tag),
        line("%s algorithm: %s, %d channels, %s" % (
            coll, "Ring + Tree" if sc.nodes > 1 else "Ring", 32 if sc.nodes > 1 else 16,
            "NET/IB with GPUDirect RDMA" if sc.nodes > 1 else "P2P over NVLink"
            if sc.gpu.vendor == "nvidia" else "P2P over Infinity Fabric"), tag=tag),
        line("Found %d %s GPUs across %d node%s" % (sc.gpus, sc.gpu.name, sc.nodes,
                                                    "" if sc.nodes == 1 else "s"), "good", tag),
    ]
    if sc.resumed_seconds:
        lines.append(line("Resuming from %s (step %s, %s of training so far)" % (
            checkpoint_path(sc, sc.first_step - 1, sc.epoch_of(sc.first_step)),
            fmt_int(sc.first_step - 1), fmt_duration(sc.resumed_seconds)), "phase", tag))
    lines += [
        line("Loading model: %s" % model.name, tag=tag),
        line("Model config: %d layers, hidden %d, %d heads (%d KV), FFN %d, vocab %s" % (
            model.layers, model.hidden, model.heads, model.kv_heads, model.ffn,
            fmt_int(model.vocab)), tag=tag),
        line("Model size: %s parameters%s" % (
            fmt_int(model.params), "" if model.active == model.params else
            " (%s active)" % fmt_int(model.active)), tag=tag),
    ]
    if sc.method in ("lora", "qlora"):
        adapters = lora_params(model, LORA_RANK[sc.method])
        lines.append(line("Trainable parameters: %s (%.2f%% of %s)" % (
            fmt_int(adapters), 100.0 * adapters / model.params, fmt_params(model.params)),
            tag=tag))
    lines.append(line("Tokenizer: %s, vocab size %s" % (model.tokenizer, fmt_int(model.vocab)),
                      tag=tag))
    if sc.loss_curve == "sft":
        lines.append(line("Dataset: %s (%s examples)" % (sc.dataset.name,
                                                         fmt_int(sc.dataset.examples)), tag=tag))
        if sc.examples < sc.dataset.examples:
            lines.append(line("Using a subset: max_train_samples=%s" % fmt_int(sc.examples),
                              tag=tag))
        lines.append(line("Packed %s examples into %s sequences of %s tokens" % (
            fmt_int(sc.examples), fmt_int(sc.packed_samples), fmt_int(sc.seq_len)), tag=tag))
    else:
        lines.append(line("Dataset: %s (%s tokens)" % (
            sc.dataset.name, "%.1fT" % (sc.dataset.tokens_per_example / 1e12)
            if sc.dataset.tokens_per_example >= 1e12 else
            "%dB" % (sc.dataset.tokens_per_example / 1e9)), tag=tag))
    lines += [
        line("Batch: %s (global), %d (per GPU)" % (fmt_int(sc.global_batch), sc.micro_batch),
             tag=tag),
        line("Gradient accumulation: %d step%s, %s tokens per optimizer step" % (
            sc.grad_accum, "" if sc.grad_accum == 1 else "s", fmt_int(sc.tokens_per_step)),
            tag=tag),
        line("Sequence length: %d" % sc.seq_len, tag=tag),
        line("Optimizer: AdamW, peak LR %.1e, warmup %s steps, %s decay to %s" % (
            sc.peak_lr, fmt_int(sc.warmup_steps), sc.schedule,
            "0" if sc.min_lr == 0 else "%.1e" % sc.min_lr), tag=tag),
        line("Epochs: %d, steps per epoch: %s, total steps: %s" % (
            sc.epochs, fmt_int(sc.steps_per_epoch), fmt_int(sc.total_steps)), tag=tag),
    ]
    if sc.eval_every != sc.steps_per_epoch:
        lines.append(line("Evaluation and checkpoint every %d steps" % sc.eval_every, tag=tag))
    lines += [
        line("Mixed precision: %s%s" % (sc.precision, " (dynamic loss scaling, initial scale "
                                                        "65536)" if sc.precision == "fp16"
                                        else ""), tag=tag),
        line("Strategy: %s, activation checkpointing" % sc.strategy, tag=tag),
        line("Training method: %s" % METHOD_TITLES[sc.method], tag=tag),
        line("Expected throughput: %s tok/s (%.1f TFLOP/s per GPU, MFU %.1f%%)" % (
            fmt_int(sc.cluster_tokens_per_s), sc.tflops_per_gpu,
            100.0 * sc.tflops_per_gpu * 1e12 / sc.gpu.peak_flops), tag=tag),
    ]
    for item, delay in paced(lines, sc.init_s, state.pacing_rng):
        if item.text.startswith("Loading model"):
            state.mem_gib = state_bytes_per_gpu(sc.model, "lora" if sc.method == "qlora"
                                                else sc.method, sc.strategy, sc.gpus, sc.tp,
                                                sc.pp) / GIB * 0.2 + RUNTIME_OVERHEAD_GIB
        state.warm_towards(0.05, delay)
        yield item, delay
    state.mem_gib = sc.memory_gib if sc.first_step > 1 else \
        sc.memory_gib - optimizer_gib(sc)
    yield line("Ready to train!", "good", tag), sc.start_gap_s


def optimizer_gib(sc):
    """Optimizer state per GPU, allocated at the first optimizer step."""
    if sc.method in ("lora", "qlora"):
        return 12.0 * lora_params(sc.model, LORA_RANK[sc.method]) / GIB
    full = state_bytes_per_gpu(sc.model, sc.method, sc.strategy, sc.gpus, sc.tp, sc.pp)
    return full * 0.75 / GIB


def progress_text(state, glyphs):
    """The progress line: `Epoch e/E [bar] p%  Step s/T | Loss ... | ETA: t`."""
    sc = state.sc
    epoch_start = (state.epoch - 1) * sc.steps_per_epoch
    in_epoch = state.step - epoch_start
    if sc.micro_updates > 1 and state.micro:
        in_epoch_done = in_epoch + state.micro / float(sc.micro_updates)
    else:
        in_epoch_done = in_epoch
    pct = 100.0 * in_epoch_done / sc.steps_per_epoch
    step_text = "Step %d/%d" % (in_epoch, sc.steps_per_epoch)
    if state.micro and state.micro < sc.micro_updates:
        step_text += " (micro-batch %d/%d)" % (state.micro * sc.grad_accum // sc.micro_updates,
                                              sc.grad_accum)
    fields = [
        "Epoch %d/%d %s %.1f%%  %s" % (state.epoch, sc.epochs,
                                       bar(in_epoch_done / sc.steps_per_epoch, 20, glyphs),
                                       pct, step_text),
        "Loss: %s" % (state.loss_text or "-"),
        "LR: %.3e" % state.lr,
        # Micro-steps of the first optimizer step come before any loss or gradient norm.
        "Grad Norm: %s" % ("-" if state.grad_norm is None else "%.3f" % state.grad_norm),
        "GPU Mem: %.1f/%.1f GB" % (state.mem_gib, sc.gpu.capacity_gib),
        "%s tok/s" % fmt_int(state.tokens_per_s),
        "%s samples/s" % "{:,.1f}".format(state.tokens_per_s / sc.seq_len),
        "ETA: %s" % fmt_eta(state.eta),
    ]
    return " | ".join(fields)


def meter(fraction, width, glyphs):
    """#####----- in `width` cells, with a partial cell where the glyph set has them."""
    fraction = max(0.0, min(1.0, fraction))
    cells = fraction * width
    full = int(cells)
    partials = glyphs["partial"]
    rest = ""
    if full < width:
        index = int((cells - full) * len(partials))
        rest = partials[index] if index else glyphs["empty"]
    return glyphs["full"] * full + rest + glyphs["empty"] * (width - full - len(rest))


def bar(fraction, width, glyphs):
    """[#####-----] with partial cells where the glyph set has them."""
    return "[" + meter(fraction, width, glyphs) + "]"


def train_phase(sc, state, seg, rng, glyphs):
    """One segment of training: progress updates, GPU grid, NCCL lines and rare events."""
    tag = "TRAIN"
    state.phase = "train"
    if seg.index == 0:
        state.train_end = state.clock + training_seconds(sc)
    events = {}
    for event in sc.events:
        events.setdefault(event.step, []).append(event)
    epoch_started = sc.epoch_of(seg.first_step)
    if seg.first_step == (epoch_started - 1) * sc.steps_per_epoch + 1 or seg.index == 0:
        state.epoch = epoch_started
        yield line("Epoch %d/%d: %s steps of %s tokens" % (
            state.epoch, sc.epochs, fmt_int(sc.steps_per_epoch), fmt_int(sc.tokens_per_step)),
            "phase", tag), 0.0
    next_grid = state.clock + GRID_EVERY_SECONDS * 0.5
    next_nccl = state.clock + NCCL_EVERY_SECONDS * rng.uniform(0.4, 1.0)
    for step, micro, seconds in seg.updates:
        yield None, seconds
        state.warm_towards(1.0, seconds)
        finishing = micro == 0 or micro == sc.micro_updates
        if not finishing:
            state.micro = micro
            yield line(progress_text(state, glyphs), "progress", tag), 0.0
            continue
        done = step - state.step
        state.micro = 0
        state.step = step
        state.epoch = sc.epoch_of(step)
        state.tokens_trained += done * sc.tokens_per_step
        if step == 1 or state.step == sc.first_step and sc.first_step == 1:
            state.mem_gib = sc.memory_gib
        step_events = events.get(step, []) if done else []
        skipped = [e for e in step_events if e.kind in ("nan", "overflow")]
        if not skipped:
            state.loss = loss_at(sc, step, rng)
            state.loss_text = "%.4f" % state.loss
            state.loss_history.append(float(state.loss_text))
        state.grad_norm = grad_norm_at(sc, step, rng)
        state.lr = lr_at(sc, step)
        state.tokens_per_s = sc.cluster_tokens_per_s * rng.uniform(0.992, 1.008)
        yield line(progress_text(state, glyphs), "progress", tag), 0.0
        for event in step_events:
            for item, delay in event_lines(sc, state, event, rng):
                yield item, delay
        if state.clock >= next_nccl:
            next_nccl = state.clock + NCCL_EVERY_SECONDS * rng.uniform(0.7, 1.3)
            yield nccl_line(sc, rng), 0.0
        if state.clock >= next_grid:
            next_grid = state.clock + GRID_EVERY_SECONDS
            for text in gpu_grid_lines(sc, state, glyphs):
                yield line(text, "grid", "GPU"), 0.0


def nccl_line(sc, rng):
    """A collective's timing that agrees with the interconnect's bandwidth."""
    coll = software_stack(sc)["collective"]
    if sc.nodes > 1:
        bus_gbs = rng.uniform(38, 46) if sc.gpu.key in ("h100", "h200", "b200", "mi300x") \
            else rng.uniform(19, 23)
    else:
        bus_gbs = {"a100-40g": 230, "a100": 230, "h100": 370, "h200": 370, "b200": 720,
                   "mi300x": 310}[sc.gpu.key] * rng.uniform(0.9, 1.05)
    op = rng.choice(["AllReduce", "AllReduce", "ReduceScatter", "AllGather", "Broadcast"])
    if sc.method in ("lora", "qlora"):
        size_mb = max(1.0, 2.0 * lora_params(sc.model, LORA_RANK[sc.method]) / 1e6)
    else:
        size_mb = rng.choice([128.0, 256.0, 512.0])
    n = sc.gpus
    factor = {"AllReduce": 2.0 * (n - 1) / n, "ReduceScatter": (n - 1.0) / n,
              "AllGather": (n - 1.0) / n, "Broadcast": 1.0}[op] if n > 1 else 1.0
    alg_gbs = bus_gbs / factor
    ms = size_mb / 1e3 / alg_gbs * 1e3
    if rng.random() < 0.3:
        return line("Gradients synchronized across %d ranks (%d buckets, %.1f ms overlapped "
                    "with backward)" % (sc.gpus, rng.choice([12, 16, 24, 32]), ms * 4),
                    "info", coll)
    return line("%s %s: %.1f MB in %.2f ms (algbw %.1f GB/s, busbw %.1f GB/s)" % (
        coll, op, size_mb, ms, alg_gbs, bus_gbs), "info", coll)


def event_lines(sc, state, event, rng):
    """The lines of one rare event; every one recovers and the run goes on."""
    tag = "TRAIN"
    rank = rng.randint(0, sc.gpus - 1)
    if event.kind == "spike":
        yield line("Loss spike at step %s: loss %s vs running mean %.4f, grad norm %.3f; "
                   "reducing LR by 50%% for the rest of the run (LR now %.3e)" % (
                       fmt_int(event.step), state.loss_text,
                       expected_loss(sc, event.step), state.grad_norm,
                       lr_at(sc, event.step + 1)), "warn", tag), 0.0
    elif event.kind == "nan":
        state.skipped += 1
        yield line("NaN loss on rank %d at step %s: batch skipped, optimizer step not applied "
                   "(skipped %d)" % (rank, fmt_int(event.step), state.skipped), "warn",
                   tag), 0.0
    elif event.kind == "overflow":
        state.skipped += 1
        state.loss_scale /= 2
        yield line("Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to "
                   "%.1f" % state.loss_scale, "warn", "AMP"), 0.0
    elif event.kind == "oom":
        capacity = sc.gpu.capacity_gib
        in_use = min(capacity - 0.4, state.mem_gib + rng.uniform(1.5, 3.0))
        yield line("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
                   "GPU %d has a total capacity of %.2f GiB of which %.2f GiB is free." % (
                       rank % sc.per_node, capacity, capacity - in_use), "error",
                   "rank%d" % rank), 0.0
        yield line("Rank %d: OOM at step %s; splitting its micro-batch in two and "
                   "redistributing, step retried" % (rank, fmt_int(event.step)), "warn",
                   tag), event.extra_s
        yield line("Step %s recovered after %.1fs" % (fmt_int(event.step), event.extra_s),
                   "good", tag), 0.0
    elif event.kind == "nccl":
        host = sc.hosts[rank // sc.per_node]
        yield line("%s WARN %s:%d: collective AllReduce timed out after 30000 ms on rank %d; "
                   "retrying (attempt 2/3)" % (software_stack(sc)["collective"], host,
                                              rng.randint(20000, 99999), rank), "error",
                   "NCCL"), event.extra_s
        yield line("Collective retried successfully after %.1fs; training continues" %
                   event.extra_s, "good", "NCCL"), 0.0


def gpu_reading(sc, state, index):
    """(util %, temperature C, power W) of one GPU: fixed offsets plus slow jitter."""
    tick = int(state.clock / 2.0)
    offset = ((index * 2654435761) % 1000) / 1000.0 - 0.5
    jitter = (((index + 1) * 40503 + tick * 69069) % 1000) / 1000.0 - 0.5
    lo, hi = sc.gpu.temp
    loaded = (lo + hi) / 2.0
    temp = 30 + (loaded - 30) * state.heat + 6 * offset + 2 * jitter
    util = 100 * state.load - 3 * abs(jitter) if state.load else 0.0
    power = sc.gpu.idle_watts + (sc.gpu.power_cap * 0.9 - sc.gpu.idle_watts) * state.load * \
        (0.96 + 0.04 * jitter) + 15 * offset
    return max(0, min(100, int(round(util)))), int(round(temp)), \
        int(round(min(sc.gpu.power_cap, power)))


def gpu_grid_lines(sc, state, glyphs):
    """Util and temperature per GPU, 8 to a line; per node range when there are many."""
    lines = []
    if sc.nodes <= 8:
        for node in range(sc.nodes):
            cells = []
            for local in range(sc.per_node):
                util, temp, _ = gpu_reading(sc, state, node * sc.per_node + local)
                cells.append("%d:%3d%% %2dC" % (local, util, temp))
            lines.append("%s  %s" % (sc.hosts[node], "  ".join(cells)))
        return lines
    groups = 8
    per_group = int(math.ceil(sc.nodes / float(groups)))
    for start in range(0, sc.nodes, per_group):
        end = min(sc.nodes, start + per_group)
        readings = [gpu_reading(sc, state, i) for i in range(start * sc.per_node,
                                                             end * sc.per_node)]
        utils, temps, powers = zip(*readings)
        lines.append("%s-%s (%d GPUs)  util %d/%d/%d%%  temp %d/%d/%dC  power %d/%d/%dW "
                     "(min/avg/max)" % (
                         sc.hosts[start], sc.hosts[end - 1], len(readings),
                         min(utils), sum(utils) // len(utils), max(utils),
                         min(temps), sum(temps) // len(temps), max(temps),
                         min(powers), sum(powers) // len(powers), max(powers)))
    return lines


def validation_phase(sc, state, seg, rng):
    """Validation after a segment: samples, Val Loss and PPL, accuracy, BLEU/ROUGE-L."""
    tag = "EVAL"
    state.phase = "val"
    forward_tokens_per_s = 3.0 * sc.cluster_tokens_per_s
    if sc.loss_curve == "sft":
        fit = int(seg.validation_s * 0.5 * forward_tokens_per_s / sc.seq_len)
        samples = max(8, min(sc.val_samples, fit))
        batches = int(math.ceil(samples / float(sc.micro_batch * sc.dp)))
        header = "Running validation: %s samples, %d batches of %d" % (
            fmt_int(samples), batches, sc.micro_batch * sc.dp)
    else:
        iters = max(1, int(seg.validation_s * 0.6 * forward_tokens_per_s
                           / sc.tokens_per_step))
        samples = iters * sc.global_batch
        header = "Running validation: %s samples (%d eval iterations of %s)" % (
            fmt_int(samples), iters, fmt_int(sc.global_batch))
    value = val_loss_at(sc, seg.last_step, rng)
    loss_text = "%.4f" % value
    ppl = math.exp(float(loss_text))
    lines = [line(header, "phase", tag)]
    for quarter in (1, 2, 3, 4):
        lines.append(line("Validation %3d%% (%s/%s samples)" % (
            25 * quarter, fmt_int(samples * quarter // 4), fmt_int(samples)), "info", tag))
    result = "Val Loss: %s  |  Val PPL: %.2f  |  Accuracy: %.1f%%" % (
        loss_text, ppl, 100 * token_accuracy(float(loss_text)))
    lines.append(line(result, "good", tag))
    if sc.instruction_set:
        bleu = max(5.0, 48.0 - 18.0 * float(loss_text)) + rng.uniform(-1, 1)
        rouge = max(0.2, 0.72 - 0.2 * float(loss_text)) + rng.uniform(-0.01, 0.01)
        lines.append(line("BLEU: %.2f  |  ROUGE-L: %.4f" % (bleu, rouge), "good", tag))
    for item, delay in paced(lines, seg.validation_s, state.pacing_rng):
        state.warm_towards(0.85, delay)
        if item.text.startswith("Val Loss"):
            state.val_history.append((len(state.loss_history), float(loss_text)))
        yield item, delay


def checkpoint_path(sc, step, epoch):
    """A run's checkpoint directory for a step, named as the framework would."""
    root = sc.checkpoint_root.format(epoch=epoch)
    if sc.method == "pretrain":
        return "%s/iter_%07d" % (root, step)
    return "%s/checkpoint-%d" % (root, step)


def checkpoint_phase(sc, state, seg, rng):
    """Sharded checkpoint: path, shard progress n/n, state sizes, time it took."""
    tag = "CKPT"
    state.phase = "ckpt"
    model_bytes, optim_bytes = checkpoint_bytes(sc)
    total = model_bytes + optim_bytes
    sharded = sc.method == "pretrain" or sc.strategy.startswith(("FSDP", "DeepSpeed"))
    shards = sc.gpus if sharded else 1
    writers = sc.nodes if sharded else 1
    # Aim the write at 60-90% of the phase; beyond ~8 GB/s a node, stage asynchronously.
    per_node_gbs = total / GB / writers / (seg.checkpoint_s * rng.uniform(0.6, 0.9))
    asynchronous = per_node_gbs > 8.0
    if asynchronous:
        staged_gbs = min(per_node_gbs, rng.uniform(20, 25) * sc.per_node)
        seconds = total / GB / writers / staged_gbs
    else:
        per_node_gbs = max(per_node_gbs, 0.05)
        seconds = total / GB / writers / per_node_gbs
    path = checkpoint_path(sc, seg.last_step, seg.epoch)
    lines = [line("Saving checkpoint to %s/" % path, "phase", tag),
             line("Model state: %s (bf16)%s  |  Optimizer state: %s (fp32 master, Adam m and v)"
                  % (fmt_bytes(model_bytes), " adapters" if sc.method in ("lora", "qlora")
                     else "", fmt_bytes(optim_bytes)), "info", tag)]
    marks = sorted(set([max(1, shards * k // 4) for k in (1, 2, 3, 4)]))
    for done in marks:
        lines.append(line("Writing shards %d/%d" % (done, shards), "info", tag))
    if asynchronous:
        lines.append(line("Checkpoint saved in %.2fs (async: %s staged to host memory on %d "
                          "node%s, upload to storage continues in background)" % (
                              seconds, fmt_bytes(total), writers, "" if writers == 1 else "s"),
                          "good", tag))
    else:
        lines.append(line("Checkpoint saved in %.2fs (%s at %.1f GB/s from %d node%s)" % (
            seconds, fmt_bytes(total), total / GB / seconds, writers,
            "" if writers == 1 else "s"), "good", tag))
    for item, delay in paced(lines, seg.checkpoint_s, state.pacing_rng):
        state.warm_towards(0.3, delay)
        if item.text.startswith("Checkpoint saved"):
            state.checkpoints += 1
        yield item, delay
    yield None, seg.gap_s


def export_phase(sc, state, rng):
    """SafeTensors conversion with progress and real shard names; the final model path."""
    tag = "EXPORT"
    state.phase = "export"
    state.train_end = state.clock
    files = export_files(sc)
    total = export_bytes(sc)
    root = sc.checkpoint_root.format(epoch=sc.epochs)
    final = "%s/final" % root
    what = "adapter weights" if sc.method in ("lora", "qlora") else "model weights (bf16)"
    lines = [line("Converting %s to SafeTensors: %s in %d file%s" % (
        what, fmt_bytes(total), len(files), "" if len(files) == 1 else "s"), "phase", tag)]
    step = max(1, int(math.ceil(len(files) / 8.0)))
    for index in range(step - 1, len(files), step):
        lines.append(line("Writing %s [%d/%d]" % (files[index], index + 1, len(files)),
                          "info", tag))
    if files[-1] != files[min(len(files) - 1, (len(files) // step) * step - 1)]:
        lines.append(line("Writing %s [%d/%d]" % (files[-1], len(files), len(files)), "info",
                          tag))
    if len(files) > 1:
        lines.append(line("Wrote model.safetensors.index.json (total_size %d)" % total,
                          "info", tag))
    lines.append(line("Exported to %s/ (%s in %.1fs)" % (final, fmt_bytes(total), sc.export_s),
                      "good", tag))
    for item, delay in paced(lines, sc.export_s, state.pacing_rng):
        state.warm_towards(0.0, delay)
        yield item, delay


def method_title(sc):
    """The method without its hyper-parameters: 'LoRA', 'Full fine-tune'."""
    return METHOD_TITLES[sc.method].split(" (")[0]


def summary_lines(sc, state, glyphs):
    """The closing box; every figure is the one already shown."""
    final_loss = state.loss_text
    rows = [
        "Model:           %s (%s)" % (sc.model.name, method_title(sc)),
        "Cluster:         %s" % sc.cluster_name,
    ]
    if sc.resumed_seconds:
        rows.append("Total time:      %s (this session %s)" % (
            fmt_duration(sc.resumed_seconds + state.clock), fmt_duration(state.clock)))
        rows.append("Tokens trained:  %s this session (%s since step 0)" % (
            fmt_int(state.tokens_trained), fmt_int(sc.last_step * sc.tokens_per_step)))
    else:
        rows.append("Total time:      %s" % fmt_duration(state.clock))
        rows.append("Tokens trained:  %s" % fmt_int(state.tokens_trained))
    rows += [
        "Final loss:      %s" % final_loss,
        "Final PPL:       %.2f" % math.exp(float(final_loss)),
        "Checkpoints: %d saved" % state.checkpoints,
    ]
    width = max(len(r) for r in rows) + 4
    top_left, top_right, bottom_left, bottom_right = glyphs["corners"]
    title = " Training complete "
    left = (width - len(title)) // 2
    out = [top_left + glyphs["hline"] * left + title + glyphs["hline"] * (
        width - left - len(title)) + top_right]
    for row in rows:
        out.append(glyphs["vline"] + "  " + row.ljust(width - 2) + glyphs["vline"])
    out.append(bottom_left + glyphs["hline"] * width + bottom_right)
    return out


def run_phases(sc, state, glyphs):
    """The whole run, phase by phase, as one stream of (line, delay)."""
    rng = random.Random(sc.seed * 7919 + 17)
    state.pacing_rng = random.Random(sc.seed * 7919 + 18)
    for item in init_phase(sc, state, rng):
        yield item
    for seg in sc.segments:
        for item in train_phase(sc, state, seg, rng, glyphs):
            yield item
        for item in validation_phase(sc, state, seg, rng):
            yield item
        for item in checkpoint_phase(sc, state, seg, rng):
            yield item
    for item in export_phase(sc, state, rng):
        yield item
    state.phase = "done"
    for text in summary_lines(sc, state, glyphs):
        yield line(text, "box", ""), 0.0


# ==========================================================================================
# Layout: pure line-builders for the dashboard. A row is a list of (text, style) segments,
# never longer than the width it was built for; styles are looked up by the renderer.
# ==========================================================================================

#: What the header says the run is doing, per RunState.phase.
PHASE_LABELS = {"init": "starting", "train": "training", "val": "validating",
                "ckpt": "checkpointing", "export": "exporting", "done": "done"}

#: The log's colour for each line kind (progress and info lines keep the default).
KIND_STYLES = {"phase": "phase", "warn": "warn", "error": "error", "good": "good",
               "box": "good"}

Layout = collections.namedtuple(
    "Layout", "rows cols chart_rows log_top log_rows grid_top grid_rows")


def clip_row(segments, width):
    """The row cut to `width` characters, without empty segments."""
    out = []
    room = width
    for text, style in segments:
        if room <= 0:
            break
        if text:
            out.append((text[:room], style))
            room -= len(out[-1][0])
    return out


def row_text(segments):
    return "".join(text for text, _ in segments)


def rule_row(title, width, glyphs):
    """A separator line with a title: `-- GPUs ------`."""
    return clip_row([(glyphs["hline"] * 2 + " ", "dim"), (title, "bold"),
                     (" " + glyphs["hline"] * width, "dim")], width)


def header_lines(state, width, run_clock, glyphs):
    """Title, run progress and the current figures: three rows of at most `width` columns."""
    sc = state.sc
    title = [(" llmtrain ", "title"), (" %s  " % PHASE_LABELS.get(state.phase, state.phase),
                                        "phase"), (sc.model.name, "bold"),
             ("  %s  %s" % (method_title(sc), sc.cluster_name), None)]
    hint = "q quits "
    room = width - len(row_text(title)) - len(hint)
    if room >= 2:
        title += [(" " * room, None), (hint, "dim")]
    if state.train_end is None:
        eta = "--:--"
    else:
        eta = fmt_eta(max(0.0, state.train_end - run_clock))
    where = "Epoch %d/%d  Step %s/%s " % (state.epoch, sc.epochs, fmt_int(max(0, state.step)),
                                        fmt_int(sc.total_steps))
    when = " %5.1f%%  Elapsed %s  ETA %s" % (100.0 * state.progress, fmt_duration(run_clock),
                                             eta)
    bar_width = width - len(where) - len(when) - 2
    progress = [(where, None)]
    if bar_width >= 5:
        progress.append((bar(state.progress, bar_width, glyphs), "good"))
    progress.append((when, None))
    figures = [("Loss ", "dim"), (state.loss_text or "-", "bold")]
    if state.val_history:
        figures += [("  val %s " % glyphs["val"], "dim"), ("%.4f" % state.val_history[-1][1],
                                                            "val")]
    figures += [("  LR ", "dim"), ("%.3e" % state.lr, None),
                ("  grad ", "dim"), ("-" if state.grad_norm is None
                                     else "%.3f" % state.grad_norm, None),
                ("  tok/s ", "dim"), (fmt_int(state.tokens_per_s), None),
                ("  mem ", "dim"), ("%.1f/%.1f GiB" % (state.mem_gib, sc.gpu.capacity_gib),
                                    None)]
    return [clip_row(title, width), clip_row(progress, width), clip_row(figures, width)]


def chart_scale(values):
    """(low, high) on round steps, so the scale moves rarely as the loss falls."""
    low, high = min(values), max(values)
    # Steps of a fifth of the span's decade: 5-50 steps across, so little height is wasted.
    unit = 10.0 ** math.floor(math.log10(max(high - low, 1e-3))) / 5.0
    low = math.floor(low / unit) * unit
    high = math.ceil(high / unit) * unit
    return low, max(high, low + unit)


def points_per_column(count, plot_width):
    """A power of two, so drawn columns keep their values while the run grows."""
    per = 1
    while count > per * plot_width:
        per *= 2
    return per


def loss_chart_lines(loss_history, val_history, width, height, glyphs):
    """Training loss as bars of `height` rows, validation losses marked; the scale on the left."""
    if height < 1 or width < 1:
        return []
    if not loss_history:
        rows = [[] for _ in range(height)]
        rows[height // 2] = clip_row([("  loss chart: waiting for the first step", "dim")],
                                     width)
        return rows
    low, high = chart_scale(loss_history + [v for _, v in val_history])
    labels = ["%.2f" % high] + [""] * (height - 2) + ["%.2f" % low] if height > 1 \
        else ["%.2f" % high]
    label_width = max(len(text) for text in labels) + 1
    if width < label_width + 4:
        label_width = 0
    plot_width = width - label_width - (1 if label_width else 0)
    per = points_per_column(len(loss_history), plot_width)
    columns = [loss_history[i:i + per] for i in range(0, len(loss_history), per)]
    spark = glyphs["spark"]
    steps = len(spark) - 1
    scale = height * steps / (high - low)
    levels = [max(1, int(round((sum(c) / len(c) - low) * scale))) for c in columns]
    marks = {}
    for index, value in val_history:
        column = max(0, index - 1) // per
        if column < plot_width:
            level = max(1, int(round((value - low) * scale)))
            marks[column] = height - 1 - min(height - 1, (level - 1) // steps)
    rows = []
    for row in range(height):
        floor = (height - 1 - row) * steps
        cells = [spark[max(0, min(steps, level - floor))] for level in levels]
        cells += [" "] * (plot_width - len(cells))
        row_segments = []
        if label_width:
            row_segments.append((labels[row].rjust(label_width - 1) + " " + glyphs["vline"],
                                 "dim"))
        start = 0
        for column in sorted(c for c, r in marks.items() if r == row):
            row_segments += [("".join(cells[start:column]), "good"), (glyphs["val"], "val")]
            start = column + 1
        row_segments.append(("".join(cells[start:]), "good"))
        rows.append(clip_row(row_segments, width))
    return rows


def gpu_cell(sc, state, index, glyphs):
    """One GPU: util bar and %, temperature, memory bar and GiB, power."""
    util, temp, power = gpu_reading(sc, state, index)
    return [("%d " % (index % sc.per_node), "dim"), (meter(util / 100.0, 4, glyphs), "good"),
            ("%3d%% " % util, None), ("%2dC " % temp, "warn" if temp >= 80 else None),
            (meter(state.mem_gib / sc.gpu.capacity_gib, 3, glyphs), "phase"),
            ("%3.0fG %4dW" % (state.mem_gib, power), None)]


def node_cell(sc, state, first, last, label_width, glyphs):
    """Nodes first..last as one cell: util, temperature and power as min/avg/max."""
    readings = [gpu_reading(sc, state, i) for i in range(first * sc.per_node,
                                                         (last + 1) * sc.per_node)]
    utils, temps, powers = zip(*readings)
    label = sc.hosts[first] if first == last else "%s-%s" % (sc.hosts[first], sc.hosts[last])
    spread = ["%d/%d/%d" % (min(v), sum(v) // len(v), max(v)) for v in (utils, temps, powers)]
    return [(label.ljust(label_width) + " ", "phase"),
            (meter(sum(utils) / 100.0 / len(utils), 4, glyphs), "good"),
            (" %s%% %sC %sW" % tuple(spread), None)]


def gpu_grid_rows(sc, state, width, max_rows, glyphs):
    """The GPU grid in at most `max_rows` rows: a title, then one cell per GPU grouped by node,
    or, when those do not fit, one cell per node (or run of nodes) with min/avg/max."""
    if max_rows < 1 or width < 1:
        return []
    body = max(1, max_rows - 1)
    gap = "  "
    host_width = max(len(host) for host in sc.hosts)
    per_gpu_width = len(row_text(gpu_cell(sc, state, 0, glyphs)))
    per_row = (width - host_width - 1 + len(gap)) // (per_gpu_width + len(gap))
    if per_row >= 1 and sc.nodes * int(math.ceil(sc.per_node / float(per_row))) <= body:
        rows = [rule_row("GPUs: util, temp, memory, power", width, glyphs)]
        for node in range(sc.nodes):
            for start in range(0, sc.per_node, per_row):
                label = sc.hosts[node] if start == 0 else ""
                row = [(label.ljust(host_width) + " ", "phase")]
                for local in range(start, min(sc.per_node, start + per_row)):
                    if local > start:
                        row.append((gap, None))
                    row += gpu_cell(sc, state, node * sc.per_node + local, glyphs)
                rows.append(clip_row(row, width))
        return rows if max_rows > 1 else rows[1:2]
    group = 1
    while True:
        label_width = host_width if group == 1 else 2 * host_width + 1
        cell_width = label_width + 1 + 4 + len(" 100/100/100% 99/99/99C 1000/1000/1000W")
        per_row = max(1, (width + len(gap)) // (cell_width + len(gap)))
        groups = int(math.ceil(sc.nodes / float(group)))
        if int(math.ceil(groups / float(per_row))) <= body or group >= sc.nodes:
            break
        group *= 2
    title = "GPUs per node" if group == 1 else "GPUs per %d nodes" % group
    rows = [rule_row("%s (%d per node): util, temp, power as min/avg/max" % (
        title, sc.per_node), width, glyphs)]
    cells = [node_cell(sc, state, first, min(sc.nodes, first + group) - 1, label_width, glyphs)
             for first in range(0, sc.nodes, group)]
    for start in range(0, len(cells), per_row):
        if len(rows) > body:
            break
        row = []
        for cell in cells[start:start + per_row]:
            if row:
                row.append((gap, None))
            row += cell
        rows.append(clip_row(row, width))
    # One row is all there is: the cells matter more than the title.
    return rows if max_rows > 1 else rows[1:2]


def log_segments(item, stamp):
    """One log line as segments: time magenta, tag cyan, the text coloured by its kind."""
    if item.kind == "box":
        return [(item.text, "good")]
    out = [(stamp + " ", "time")]
    if item.tag:
        out.append(("[%s] " % item.tag, "phase"))
    out.append((item.text, KIND_STYLES.get(item.kind)))
    return out


def log_rows(entries, live, width, count):
    """The last `count` log lines, the live progress line pinned below them as tqdm does."""
    if count < 1:
        return []
    shown = list(entries)[-(count - 1 if live else count):] if count > 1 or not live else []
    if live:
        shown.append(live)
    return [clip_row(segments, width) for segments in shown[-count:]]


def dashboard_layout(rows, cols, grid_rows_within):
    """Where each region goes on a rows x cols screen, or None when it is too small.
    grid_rows_within(cap) says how many rows the GPU grid takes when given at most cap."""
    if rows < MIN_ROWS or cols < MIN_COLUMNS:
        return None
    chart_rows = 2 if rows < 20 else 3 if rows < 30 else 5 if rows < 45 else 8
    header = 3 + chart_rows
    grid = max(2, min(grid_rows_within(max(2, (rows - header) // 3)), (rows - header) // 2))
    return Layout(rows, cols, chart_rows, header, rows - header - grid, rows - grid, grid)


# ==========================================================================================
# Renderers: the plain line log (the dashboard draws the same run from RunState)
# ==========================================================================================

def timestamp():
    """The current local time, as every line shows it."""
    return time.strftime("[%Y-%m-%d %H:%M:%S]")


def paint(text, code, color):
    return "\x1b[%sm%s\x1b[0m" % (ANSI[code], text) if color and text else text


def plain_text(item, color):
    """One log line: `[time] [TAG] text`, coloured by kind when asked."""
    if item.kind == "box":
        return paint(item.text, "good", color)
    body_color = {"phase": "phase", "warn": "warn", "error": "error", "good": "good"}
    tag = paint("[%s] " % item.tag, "phase", color) if item.tag else ""
    body = paint(item.text, body_color[item.kind], color) if item.kind in body_color \
        else item.text
    return "%s %s%s" % (paint(timestamp(), "time", color), tag, body)


class PlainRenderer(object):
    """Prints the run as a line log; on a terminal the progress line is redrawn in place."""

    def __init__(self, stream, color, redraw):
        self.stream = stream
        self.color = color
        self.redraw = redraw
        self.live = ""

    def emit(self, item, state):
        text = plain_text(item, self.color)
        if self.redraw and item.kind == "progress":
            width = shutil.get_terminal_size((100, 24)).columns - 1
            # Colour codes would be cut mid-sequence: the live line is clipped uncoloured.
            shown = plain_text(item, False)[:width]
            self.stream.write("\r" + shown + " " * max(0, len(self.live) - len(shown)))
            self.live = shown
        else:
            if self.live:
                self.stream.write("\r" + " " * len(self.live) + "\r")
            self.stream.write(text + "\n")
            if self.live:
                self.stream.write(self.live)
        self.stream.flush()

    def end_run(self, state):
        if self.live:
            self.stream.write("\r" + " " * len(self.live) + "\r")
            self.live = ""
        self.stream.write("\n")
        self.stream.flush()

    def idle(self, seconds):
        time.sleep(seconds)

    def close(self):
        if self.live:
            self.stream.write("\n")
            self.live = ""


def pick_glyphs(stream):
    """Unicode glyphs where the stream can encode them, ASCII otherwise."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    sample = "".join(UNICODE_GLYPHS[k] for k in ("full", "empty", "partial", "hline",
                                                   "corners", "spark"))
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_GLYPHS
    return UNICODE_GLYPHS


# ==========================================================================================
# Renderers: the curses dashboard (header and loss chart, scrolling log, GPU grid)
# ==========================================================================================

class Quit(Exception):
    """q was pressed on the dashboard: end quietly with status 0."""


class TerminalLost(Exception):
    """The terminal went away (hangup without SIGHUP, dead pty): status 129."""


def style_attributes(curses, color):
    """A curses attribute per segment style: colour pairs where the terminal has them (the
    8 basic colours), bold and reverse otherwise."""
    attrs = {None: 0, "time": 0, "phase": curses.A_BOLD, "warn": curses.A_BOLD,
             "error": curses.A_BOLD, "good": 0, "val": curses.A_BOLD, "dim": curses.A_DIM,
             "bold": curses.A_BOLD, "title": curses.A_REVERSE}
    if not color or not curses.has_colors():
        return attrs
    try:
        curses.start_color()
    except curses.error:
        return attrs
    background = -1
    try:
        curses.use_default_colors()
    except curses.error:
        background = curses.COLOR_BLACK
    palette = [("time", curses.COLOR_MAGENTA), ("phase", curses.COLOR_CYAN),
               ("warn", curses.COLOR_YELLOW), ("error", curses.COLOR_RED),
               ("good", curses.COLOR_GREEN), ("val", curses.COLOR_YELLOW),
               ("title", curses.COLOR_CYAN)]
    for number, (style, colour) in enumerate(palette, 1):
        if number >= curses.COLOR_PAIRS or colour >= curses.COLORS:
            continue
        try:
            curses.init_pair(number, colour, background)
        except (curses.error, ValueError):
            # Python 3.10+ raises ValueError for pairs or colours the terminal lacks.
            continue
        attrs[style] = curses.color_pair(number) | (attrs[style] & ~curses.A_DIM)
    return attrs


class DashboardRenderer(object):
    """Draws the run full screen. Regions redraw on their own schedule and only what changed
    reaches the terminal (curses sends the difference); keys are read while idle."""

    def __init__(self, curses, screen, glyphs, color):
        self.curses = curses
        self.scr = screen
        self.glyphs = glyphs
        self.styles = style_attributes(curses, color)
        self.pacer = None
        self.state = None
        self.log = collections.deque(maxlen=LOG_KEEP)
        self.live = None
        self.layout = None
        self.size = screen.getmaxyx()
        self.drawn_at = {"header": 0.0, "grid": 0.0, "log": 0.0}
        self.log_dirty = True
        self.chart_key = None
        self.quick_polls = 0
        self.polled_at = 0.0
        self.closed = False
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # vt100 and some terminals cannot hide the cursor
        # Lets curses scroll the log region with the terminal's own scrolling.
        screen.idlok(True)

    # --- the renderer interface -------------------------------------------------------
    def start_run(self, state):
        self.state = state
        self.relayout()  # a new scenario may need another grid height

    def emit(self, item, state):
        self.state = state
        # The plain log's GPU grid lines are skipped: the dashboard has a grid of its own.
        if item.kind != "grid":
            segments = log_segments(item, time.strftime("%H:%M:%S"))
            if item.kind == "progress":
                self.live = segments
            else:
                self.log.append(segments)
            self.log_dirty = True
        now = time.monotonic()
        if now - self.polled_at >= LOG_REFRESH_S:
            # With --instant the driver never idles: read keys here too.
            self.polled_at = now
            self.read_key(0)
        self.draw()

    def idle(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            self.draw()
            now = time.monotonic()
            if now >= deadline:
                return
            self.read_key(min(deadline, self.next_draw()) - now)

    def end_run(self, state):
        self.state = state
        self.draw(force=True)

    def close(self):
        """Give the terminal back as it was found: the one restore path, safe to repeat."""
        if self.closed:
            return
        self.closed = True
        end_curses(self.curses)

    # --- keys and size ----------------------------------------------------------------
    def read_key(self, seconds):
        """Wait up to `seconds` for a key; q quits, a resize lays the screen out again."""
        wait_ms = max(0, int(seconds * 1000))
        self.scr.timeout(wait_ms)
        started = time.monotonic()
        key = self.scr.getch()
        if key == -1:
            # A dead terminal returns at once however long the timeout: count those.
            if wait_ms and time.monotonic() - started < wait_ms / 4000.0:
                self.quick_polls += 1
                if self.quick_polls >= DEAD_TERMINAL_POLLS:
                    raise TerminalLost()
            elif wait_ms:
                self.quick_polls = 0
            return
        self.quick_polls = 0
        if key in (ord("q"), ord("Q"), 27):
            raise Quit()
        if key == 3:
            raise KeyboardInterrupt()  # ^C as a byte, where the terminal sends no SIGINT
        if key == self.curses.KEY_RESIZE:
            # What the terminal shows after a resize is unknown (reflowed, cut): repaint all.
            self.scr.clearok(True)
            self.relayout()

    def relayout(self):
        """Fit the regions to the terminal's size as it is now, and redraw all of them."""
        self.curses.update_lines_cols()
        self.size = rows, cols = self.scr.getmaxyx()
        self.scr.erase()
        state = self.state
        if state is None:
            self.layout = None
        else:
            self.layout = dashboard_layout(rows, cols, lambda cap: len(
                gpu_grid_rows(state.sc, state, cols, cap, self.glyphs)))
        if self.layout is None and state is not None:
            self.put(0, 0, "Terminal too small (%dx%d, needs %dx%d). q quits." % (
                cols, rows, MIN_COLUMNS, MIN_ROWS), self.styles["bold"])
        self.chart_key = None
        self.draw(force=True)

    # --- drawing ----------------------------------------------------------------------
    def put(self, y, x, text, attr=0):
        """Write clipped to the screen; the bottom-right cell is never written."""
        rows, cols = self.size
        if not (0 <= y < rows and 0 <= x < cols):
            return
        room = cols - x - (1 if y == rows - 1 else 0)
        if room <= 0:
            return
        try:
            self.scr.addnstr(y, x, text, room, attr)
        except self.curses.error:
            pass

    def put_row(self, y, segments):
        """One row of segments, the rest of the line cleared."""
        x = 0
        for text, style in segments:
            self.put(y, x, text, self.styles.get(style, 0))
            x += len(text)
        if x < self.size[1]:
            try:
                self.scr.move(y, x)
                self.scr.clrtoeol()
            except self.curses.error:
                pass

    def next_draw(self):
        """When the next region is due (the header ticks, the grid follows its readings)."""
        if self.layout is None:
            return float("inf")  # the too-small notice needs no redraws
        due = min(self.drawn_at["header"] + HEADER_REFRESH_S,
                  self.drawn_at["grid"] + GRID_REFRESH_S)
        if self.log_dirty:
            due = min(due, self.drawn_at["log"] + LOG_REFRESH_S)
        return due

    def draw(self, force=False):
        """Redraw the regions that are due, then send the difference in one update."""
        layout = self.layout
        if layout is None or self.state is None:
            self.update()
            return
        now = time.monotonic()
        drew = False
        if self.log_dirty and (force or now >= self.drawn_at["log"] + LOG_REFRESH_S):
            self.draw_log(layout)
            self.drawn_at["log"] = now
            self.log_dirty = False
            drew = True
        if force or now >= self.drawn_at["header"] + HEADER_REFRESH_S:
            self.draw_header(layout)
            self.drawn_at["header"] = now
            drew = True
        if force or now >= self.drawn_at["grid"] + GRID_REFRESH_S:
            rows = gpu_grid_rows(self.state.sc, self.state, layout.cols, layout.grid_rows,
                                 self.glyphs)
            for index in range(layout.grid_rows):
                self.put_row(layout.grid_top + index, rows[index] if index < len(rows) else [])
            self.drawn_at["grid"] = now
            drew = True
        if drew:
            self.update()

    def draw_header(self, layout):
        state = self.state
        clock = self.pacer.run_clock(state) if self.pacer is not None else state.clock
        rows = header_lines(state, layout.cols, clock, self.glyphs)
        for index, segments in enumerate(rows):
            self.put_row(index, segments)
        # The chart only changes with a new loss or validation point.
        key = (len(state.loss_history), len(state.val_history), id(state))
        if key != self.chart_key:
            self.chart_key = key
            chart = loss_chart_lines(state.loss_history, state.val_history, layout.cols,
                                     layout.chart_rows, self.glyphs)
            for index, segments in enumerate(chart):
                self.put_row(len(rows) + index, segments)

    def draw_log(self, layout):
        self.put_row(layout.log_top, rule_row("log", layout.cols, self.glyphs))
        lines = log_rows(self.log, self.live, layout.cols, layout.log_rows - 1)
        for index in range(layout.log_rows - 1):
            self.put_row(layout.log_top + 1 + index, lines[index] if index < len(lines) else [])

    def update(self):
        try:
            self.scr.noutrefresh()
            self.curses.doupdate()
        except self.curses.error:
            pass  # a terminal that has gone away is noticed by read_key


def end_curses(curses):
    """Cursor back on, modes and screen restored; each step survives a dead terminal."""
    for restore in (lambda: curses.curs_set(1), curses.endwin):
        try:
            restore()
        except curses.error:
            pass


# ==========================================================================================
# Terminal detection: the dashboard where curses can drive the terminal, else the plain log
# ==========================================================================================

def attach_keyboard():
    """Keys come from the terminal even when the script itself arrived on stdin
    (`curl ... | python3 -`): put /dev/tty on fd 0. False when there is no terminal."""
    if os.isatty(0):
        return True
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.dup2(tty, 0)
    os.close(tty)
    return True


def pick_term(curses, term):
    """A terminfo entry that can address the cursor: $TERM or a close relative; None for
    dumb, unset or unknown terminals."""
    if not term or term == "dumb":
        return None
    for name in (term, "xterm-256color" if "256" in term else "xterm", "vt100"):
        try:
            curses.setupterm(name, sys.stdout.fileno())
        except curses.error:
            continue
        # The first successful setupterm latches (later ones are no-ops): judge this one.
        if curses.tigetstr("cup") and curses.tigetstr("clear"):
            return name
        return None
    return None


def use_utf8_locale():
    """True when curses can draw Unicode: the locale is UTF-8 or can be switched to one."""
    import locale
    if locale.nl_langinfo(locale.CODESET).upper().replace("-", "") == "UTF8":
        return True
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8", "en_US.utf8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        return True
    return False


def open_dashboard(color, ascii_only):
    """The dashboard on this terminal, or None where curses cannot drive it (not a terminal,
    no curses module, no terminfo entry, initscr failing)."""
    if not sys.stdout.isatty():
        return None
    try:
        import curses
    except ImportError:
        return None
    if not attach_keyboard():
        return None
    term = pick_term(curses, os.environ.get("TERM", ""))
    if term is None:
        return None
    os.environ["TERM"] = term  # initscr reads $TERM again
    glyphs = ASCII_GLYPHS if ascii_only or not use_utf8_locale() else UNICODE_GLYPHS
    os.environ.setdefault("ESCDELAY", "25")
    # Exported LINES/COLUMNS would pin the size: curses would never see a resize.
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    try:
        screen = curses.initscr()
    except curses.error:
        return None
    renderer = None
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        renderer = DashboardRenderer(curses, screen, glyphs, color)
    except curses.error:
        pass  # e.g. cbreak() without a terminal for its modes: the plain log it is
    finally:
        if renderer is None:
            end_curses(curses)
    return renderer


# ==========================================================================================
# Pacing: the run's clock against the wall clock (only the driver sleeps)
# ==========================================================================================

class ExitAfter(Exception):
    """--exit-after elapsed: end quietly with status 0."""


class Pacer(object):
    """Waits until each line is due: the run's clock over --speed, never drifting."""

    def __init__(self, speed=1.0, instant=False, exit_after=None, monotonic=time.monotonic):
        self.speed = speed
        self.instant = instant
        self.exit_after = exit_after
        self.monotonic = monotonic
        self.started = monotonic()
        self.anchor = self.started

    def start_run(self):
        self.anchor = self.monotonic()

    def run_clock(self, state):
        """The run's clock as of now: during a wait, between the last line and the next."""
        if self.instant:
            return state.clock
        return min(state.clock, (self.monotonic() - self.anchor) * self.speed)

    def check_exit(self):
        if self.exit_after is not None and self.monotonic() - self.started >= self.exit_after:
            raise ExitAfter()

    def advance(self, state, seconds, idle):
        """Move the run's clock on by `seconds`, waiting in idle() until the wall agrees."""
        state.clock += seconds
        self.check_exit()
        if self.instant:
            return
        due = self.anchor + state.clock / self.speed
        if self.exit_after is not None:
            due_exit = self.started + self.exit_after
        else:
            due_exit = None
        while True:
            now = self.monotonic()
            if now >= due:
                return
            wait = min(due - now, 0.25)
            if due_exit is not None:
                wait = max(0.0, min(wait, due_exit - now))
            idle(wait)
            self.check_exit()

    def pause(self, seconds, idle):
        """A pause outside any run (between runs)."""
        if self.instant:
            self.check_exit()
            return
        end = self.monotonic() + seconds / self.speed
        while self.monotonic() < end:
            idle(min(0.25, end - self.monotonic()))
            self.check_exit()


def drive(stream, state, renderer, pacer):
    """Render each line of the run and wait out its delay."""
    for item, delay in stream:
        if item is not None:
            renderer.emit(item, state)
        if delay:
            pacer.advance(state, delay, renderer.idle)


def run_many(args, renderer, pacer, first_seed):
    """Run after run (forever unless --runs), each from its own seed."""
    glyphs = renderer.glyphs
    index = 0
    while args.runs is None or index < args.runs:
        try:
            sc = build_scenario(first_seed + index, args.model, args.gpus, args.gpu,
                                args.humor)
        except ScenarioError:
            if index == 0:
                raise
            index += 1
            continue
        state = RunState(sc)
        pacer.start_run()
        if hasattr(renderer, "start_run"):
            renderer.start_run(state)
        drive(run_phases(sc, state, glyphs), state, renderer, pacer)
        renderer.end_run(state)
        index += 1
        if args.runs is None or index < args.runs:
            pacer.pause(3.0, renderer.idle)


# ==========================================================================================
# Signals and lifecycle: handlers only raise; one path restores the terminal
# ==========================================================================================

class Terminated(Exception):
    """A terminating signal arrived; the exit status is 128 + its number."""

    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


def raise_terminated(signum, frame):
    raise Terminated(signum)


def install_signal_handlers():
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), raise_terminated)


def ignore_signals():
    """While restoring the terminal, a second signal must not interrupt the restore."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), signal.SIG_IGN)
            except (OSError, ValueError):
                pass


def close_renderer(renderer):
    """Restore the terminal (dashboard) or end the live line (plain log), whatever happened."""
    try:
        renderer.close()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout():
    """After EPIPE, point stdout at /dev/null so the final flush cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ==========================================================================================
# Command line
# ==========================================================================================

class UsageParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, "%s: error: %s (see --help)\n" % (self.prog, message))


def positive_int(text, upper=None):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text)
    if value < 1 or (upper is not None and value > upper):
        raise argparse.ArgumentTypeError("%s is out of range (1-%s)" % (
            text, upper if upper else "..."))
    return value


def gpu_count(text):
    return positive_int(text, MAX_GPUS)


def seed_value(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text)
    if value < 0 or value >= 2 ** 63:
        raise argparse.ArgumentTypeError("%s is out of range (0 to 2**63-1)" % text)
    return value


def speed_value(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("%s must be a finite number > 0" % text)
    return value


def duration_value(text):
    """90, 90s, 5m, 1h30m, 1h30m15s -> seconds."""
    match = re.match(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$", text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError("%r is not a duration like 90s, 5m or 1h30m" % text)
    hours, minutes, seconds = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    if total <= 0:
        raise argparse.ArgumentTypeError("%r must be longer than zero" % text)
    return total


def build_parser():
    parser = UsageParser(
        prog="llmtrain",
        description="A convincing, internally consistent LLM training run in your terminal.")
    parser.add_argument("--plain", action="store_true",
                        help="plain line log instead of the dashboard (default when piped)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour output (auto: on a terminal unless NO_COLOR is set)")
    parser.add_argument("--ascii", action="store_true",
                        help="ASCII bars and chart (for fonts or CJK terminals that draw "
                             "block characters double-width)")
    parser.add_argument("--seed", type=seed_value, help="same seed, same run")
    parser.add_argument("--speed", type=speed_value, default=1.0,
                        help="run F times faster than real time (default 1)")
    parser.add_argument("--instant", action="store_true", help="no pauses at all")
    parser.add_argument("--runs", type=positive_int, help="stop after N runs (default: forever)")
    parser.add_argument("--exit-after", type=duration_value, metavar="DURATION",
                        help="stop after a wall-clock time such as 90s, 5m or 1h30m")
    parser.add_argument("--model", metavar="NAME",
                        help="a model from --list-models, or a custom name with a size, "
                             "e.g. acme-13B")
    parser.add_argument("--list-models", action="store_true", help="list the known models")
    parser.add_argument("--gpus", type=gpu_count, metavar="N", help="number of GPUs (1-4096)")
    parser.add_argument("--gpu", type=str.lower, choices=list(GPUS), help="GPU type")
    parser.add_argument("--humor", choices=("off", "some", "max"), default="some",
                        help="funny model/dataset/checkpoint names: never, sometimes, always")
    parser.add_argument("--version", action="version", version="llmtrain " + __version__)
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is not None:
        try:
            find_model(args.model)
        except ScenarioError as error:
            parser.error("argument --model: %s" % error)
    return parser, args


def list_models():
    lines = ["%-16s %18s params  vocab %7s  %s" % (
        m.name, fmt_int(m.params), fmt_int(m.vocab),
        "MoE, %s active" % fmt_int(m.active) if m.active != m.params else "dense")
        for m in MODELS]
    return "\n".join(lines) + "\n"


def wants_color(choice, stream, environ):
    if choice == "always":
        return True
    if choice == "never" or "NO_COLOR" in environ:
        return False
    return stream.isatty() and environ.get("TERM", "") not in ("", "dumb")


# ==========================================================================================
# main
# ==========================================================================================

def main(argv=None):
    parser, args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list_models:
        sys.stdout.write(list_models())
        return EXIT_OK
    first_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    try:
        build_scenario(first_seed, args.model, args.gpus, args.gpu, args.humor)
    except ScenarioError as error:
        parser.error(str(error))
    pacer = Pacer(args.speed, args.instant, args.exit_after)
    stream = sys.stdout
    color = wants_color(args.color, stream, os.environ)
    # Our handlers go in before initscr, so curses installs none of its own for SIGTERM.
    install_signal_handlers()
    status = EXIT_OK
    renderer = None
    try:
        try:
            renderer = None if args.plain else open_dashboard(color, args.ascii)
            if renderer is None:
                renderer = PlainRenderer(stream, color, redraw=stream.isatty())
                renderer.glyphs = ASCII_GLYPHS if args.ascii else pick_glyphs(stream)
            renderer.pacer = pacer
            run_many(args, renderer, pacer, first_seed)
        finally:
            ignore_signals()
            if renderer is not None:
                close_renderer(renderer)
    except (ExitAfter, Quit):
        status = EXIT_OK
    except KeyboardInterrupt:
        status = EXIT_SIGNAL_BASE + signal.SIGINT
    except Terminated as stop:
        status = EXIT_SIGNAL_BASE + stop.signum
    except TerminalLost:
        status = EXIT_SIGNAL_BASE + signal.SIGHUP
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    try:
        stream.flush()
    except BrokenPipeError:
        silence_stdout()
    return status


if __name__ == "__main__":
    sys.exit(main())
