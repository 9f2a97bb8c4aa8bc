#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""llmtrain - a whole LLM training run, faked convincingly, in any terminal.

Like genact fakes a kernel compile, llmtrain fills the screen with a distributed LLM
training run: torchrun/NCCL start-up, a GPU grid, a falling loss, an ETA that counts down,
validation, checkpoints and the job's last lines. A run is a fine-tune on an instruction set,
a from-scratch speedrun of a small model, or the final stretch of a long pretraining job
resumed from its checkpoint. Every figure is derived from one scenario (GPU type and count,
model, method, dataset, batch, schedule), so the numbers add up, and at --speed 1 the
on-screen clock agrees with a stopwatch. Runs after the first start at the shell prompt of
the same cluster, with the command that launches them.

Usage:
    python3 llmtrain.py                     full-screen dashboard on a terminal, forever
    python3 llmtrain.py --plain             plain line log (the default when piped)
    python3 llmtrain.py --runs 1 --seed 7   one reproducible run
    python3 llmtrain.py --style megatron    the same kind of run as Megatron-LM would log it
    python3 llmtrain.py --started-ago 5m    busy at once: launched 5 minutes ago, already going
    curl -sSL URL | python3 -               straight from the web, options after "-"

Options (see --help):
    --plain  --color auto|always|never  --ascii  --seed N  --speed F  --instant  --runs N
    --exit-after 90s|5m|1h30m  --started-ago 90s|5m|1h30m  --model NAME  --list-models  --gpus N
    --gpu a100-40g|a100|h100|h200|b200|mi300x  --humor off|some|max  --version
    --style classic|hf|lightning|deepspeed|megatron|torchtitan|random  --list-styles

Styles: `classic` (the default) is llmtrain's own tagged log. The others tell the same run
(same scenario, numbers and pacing for a seed) in one framework's own words: nvidia-smi,
torchrun's launcher and NCCL's init, then the Hugging Face Trainer, PyTorch Lightning,
DeepSpeed, Megatron-LM or torchtitan log lines with their own prefixes and timestamps.
A style asked for by name is given a run its framework trains (Megatron-LM and torchtitan
train whole models only, Lightning has no pipeline parallelism), as --model narrows the draw;
`random` picks, per run and from the run's seed, among the frameworks that can train it.

Started ago: --started-ago DURATION starts the session as if the job had been launched that
long ago (at most 24h). What it printed since is printed at once, each line stamped with the
time it would have had; the dashboard opens with the chart drawn, elapsed and ETA counting
from that launch. Runs that would have ended by now are printed whole and count towards
--runs (--runs 1 --started-ago 1h prints one finished run and ends); at --speed F, F times as
much of the run lies behind. It needs a clock, so not with --instant.

Dashboard: a header (model, method, cluster, epoch and step, run progress, elapsed and ETA,
loss, LR, tok/s, and a chart of the training loss with validation points marked), the
scrolling log with the progress line updated in place, and a grid of GPUs by node (one cell
per node, min/avg/max, when there are too many). Resize at will; below 40x12 it says so.
Keys, environment and exit status: MANUAL, under "Command line" below (--help and the
man page print it).

llmtrain reads no hardware, opens no socket and writes no file: it only prints.
Standard library only, Python 3.6 or newer.
"""

import argparse
import collections
import errno
import io
import itertools
import json
import math
import os
import random
import re
import select
import shutil
import signal
import struct
import sys
import textwrap
import threading
import time
import unicodedata

__version__ = "1.0.0"


# ==========================================================================================
# Constants and limits
# ==========================================================================================

#: Pacing at --speed 1, in seconds of the run's clock: a whole run lasts 2-4 minutes.
INIT_SECONDS = (5.0, 10.0)
SEGMENT_SECONDS = (30.0, 60.0)
#: The one stretch of a resumed job's final decay fills what the rest of the run leaves.
FINAL_STRETCH_SECONDS = (90.0, 170.0)
VALIDATION_SECONDS = (5.0, 10.0)
PHASE_GAP_SECONDS = (0.4, 1.5)
FIRST_STEP_EXTRA_SECONDS = (2.0, 4.0)
RUN_SECONDS = (135.0, 220.0)
#: Sustained write rates (GB/s): one node's checkpoint shards to a parallel file system
#: (NVIDIA's DGX benchmark saves an 8B checkpoint of ~105 GB from one node in 24.9 s), and
#: one process writing the final model with save_pretrained.
NODE_WRITE_GBS = (2.0, 5.0)
RANK0_WRITE_GBS = (1.2, 2.2)
#: A synchronous checkpoint longer than this is staged to host memory and written async.
ASYNC_CHECKPOINT_SECONDS = 8.0
#: A final model that takes longer than this to write is left to the last checkpoint.
MAX_EXPORT_SECONDS = 75.0
#: No run is longer than this, whatever was asked for (seconds at --speed 1).
RUN_HARD_LIMIT_SECONDS = 300
#: Whole epochs come in whole steps; a run still short of this gets longer fixed phases.
SHORTEST_RUN_SECONDS = 123.0
#: Display updates come every 0.3-1 s; steps shorter than this are logged in groups.
UPDATE_SECONDS = (0.3, 1.0)
#: How often the GPU grid and the NCCL timing lines appear, in seconds of training.
GRID_EVERY_SECONDS = 12.0
NCCL_EVERY_SECONDS = 9.0

#: A line this late (seconds of wall time) means the process was stopped: resume, no burst.
STALL_SECONDS = 1.0
#: --started-ago goes back at most this far (seconds): a day of runs prints in seconds.
MAX_BACKLOG_SECONDS = 24 * 3600
#: An error line stays one short line, whatever value was pasted.
MAX_ERROR_CHARS = 160
#: A value in an error line is shown up to this many characters, then elided.
MAX_VALUE_CHARS = 24

#: Bus bandwidth per GPU in a ring collective (GB/s): NVLink or Infinity Fabric inside a
#: node; one 400 Gb/s InfiniBand rail per GPU across nodes (200 Gb/s on A100 systems).
INTRA_NODE_BUS_GBS = {"a100-40g": 230.0, "a100": 230.0, "h100": 370.0, "h200": 370.0,
                      "b200": 720.0, "mi300x": 310.0}
INTER_NODE_BUS_GBS = {"a100-40g": 21.0, "a100": 21.0, "h100": 42.0, "h200": 42.0,
                      "b200": 42.0, "mi300x": 42.0}

#: Sequences per optimizer step above which a fine-tune would be odd (SFT uses 16-512).
MAX_FINETUNE_BATCH = 512

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
EXIT_OUTPUT_ERROR = 1
EXIT_SIGNAL_BASE = 128

#: Below this size the dashboard shows a one-line "too small" notice instead of its regions.
MIN_COLUMNS = 40
MIN_ROWS = 12
#: Past what any screen shows (an 8K display in a 6-pixel font has about 1,300 columns) the
#: plain log is printed: ncurses keeps curscr, newscr and stdscr, each cell in each, and its
#: sizes are shorts (curses.h), so from 32,768 on it crashes.
MAX_ROWS = 1000
MAX_COLUMNS = 2000
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

#: Bars, the chart, rules and boxes; "tqdm" is tqdm's own bar charset (ascii=True in ASCII).
UNICODE_GLYPHS = {"full": "█", "empty": "░", "partial": " ▏▎▍▌▋▊▉", "spark": " ▁▂▃▄▅▆▇█",
                  "hline": "─", "vline": "│", "corners": "┌┐└┘", "val": "◆",
                  "tqdm": " ▏▎▍▌▋▊▉█"}
ASCII_GLYPHS = {"full": "#", "empty": "-", "partial": " .:=", "spark": " .-=+*#%@",
                "hline": "-", "vline": "|", "corners": "++++", "val": "o",
                "tqdm": " 123456789#"}

#: Text whose width may differ from its length; ASCII (nearly every line) is counted by len().
NOT_ASCII = re.compile("[^\x00-\x7f]")


def char_cells(char):
    """Terminal columns of one character: East Asian wide and fullwidth take two, combining
    marks and zero-width characters none (Unicode Standard Annex #11)."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text):
    """Terminal columns of a text."""
    if not NOT_ASCII.search(text):
        return len(text)
    return sum(char_cells(char) for char in text)


def clip_cells(text, width):
    """The longest start of `text` that takes at most `width` columns."""
    if not NOT_ASCII.search(text):
        return text[:width]
    used = 0
    for index, char in enumerate(text):
        used += char_cells(char)
        if used > width:
            return text[:index]
    return text


def pad_cells(text, width):
    """`text` padded with spaces to `width` columns (str.ljust counts characters)."""
    return text + " " * max(0, width - cells(text))

#: ANSI SGR colours per line kind: timestamps magenta, phases cyan, warnings yellow,
#: errors red, good news green (the reference palette).
ANSI = {"time": "35", "phase": "36", "warn": "33", "error": "31", "good": "32", "dim": "2",
        "bold": "1"}


# ==========================================================================================
# ==========================================================================================
# Data pools: GPUs, models and datasets as published
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
             "funny context")

#: Published configurations (each model's config.json or paper) and exact parameter counts.
MODELS = [
    Model("GPT-2", 124439808, 124439808, 50257, 12, 768, 12, 12, 3072, "GPT-2 BPE", 6e-4,
          "gpt2", False, 1024),
    Model("Qwen2.5-0.5B", 494032768, 494032768, 151936, 24, 896, 14, 2, 4864, "Qwen2 BPE",
          6e-4, "qwen", False, 32768),
    Model("Llama-3.2-1B", 1235814400, 1235814400, 128256, 16, 2048, 32, 8, 8192,
          "Llama 3 tiktoken", 4e-4, "llama", False, 131072),
    Model("GPT-2-XL", 1557611200, 1557611200, 50257, 48, 1600, 25, 25, 6400, "GPT-2 BPE",
          2e-4, "gpt2", False, 1024),
    Model("Llama-2-7B", 6738415616, 6738415616, 32000, 32, 4096, 32, 32, 11008,
          "Llama 2 SentencePiece", 3e-4, "llama", False, 4096),
    Model("Falcon-7B", 6921720704, 6921720704, 65024, 32, 4544, 71, 1, 18176, "Falcon BPE",
          3e-4, "falcon", False, 2048),
    Model("Mistral-7B-v0.1", 7241732096, 7241732096, 32000, 32, 4096, 32, 8, 14336,
          "Mistral SentencePiece", 3e-4, "mistral", False, 32768),
    Model("Qwen2.5-7B", 7615616512, 7615616512, 152064, 28, 3584, 28, 4, 18944, "Qwen2 BPE",
          3e-4, "qwen", False, 131072),
    Model("Llama-3.1-8B", 8030261248, 8030261248, 128256, 32, 4096, 32, 8, 14336,
          "Llama 3 tiktoken", 3e-4, "llama", False, 131072),
    Model("Gemma-2-9B", 9241705984, 9241705984, 256000, 42, 3584, 16, 8, 14336,
          "Gemma SentencePiece", 3e-4, "gemma", False, 8192),
    Model("Llama-2-13B", 13015864320, 13015864320, 32000, 40, 5120, 40, 40, 13824,
          "Llama 2 SentencePiece", 3e-4, "llama", False, 4096),
    Model("GPT-NeoX-20B", 20554567680, 20554567680, 50432, 44, 6144, 64, 64, 24576,
          "GPT-NeoX BPE", 1.2e-4, "neox", False, 2048),
    Model("Gemma-2-27B", 27227128320, 27227128320, 256000, 46, 4608, 32, 16, 36864,
          "Gemma SentencePiece", 1.5e-4, "gemma", False, 8192),
    Model("Mixtral-8x7B", 46702792704, 12879925248, 32000, 32, 4096, 32, 8, 14336,
          "Mistral SentencePiece", 3e-4, "mixtral", False, 32768),
    Model("Llama-2-70B", 68976648192, 68976648192, 32000, 80, 8192, 64, 8, 28672,
          "Llama 2 SentencePiece", 1.5e-4, "llama", False, 4096),
    Model("Llama-3.1-70B", 70553706496, 70553706496, 128256, 80, 8192, 64, 8, 28672,
          "Llama 3 tiktoken", 1.5e-4, "llama", False, 131072),
    Model("Qwen2.5-72B", 72706203648, 72706203648, 152064, 80, 8192, 64, 8, 29568,
          "Qwen2 BPE", 1.5e-4, "qwen", False, 131072),
    Model("Llama-3.1-405B", 405853388800, 405853388800, 128256, 126, 16384, 128, 8, 53248,
          "Llama 3 tiktoken", 8e-5, "llama", False, 131072),
    Model("Llama-3.2-3B", 3212749824, 3212749824, 128256, 28, 3072, 24, 8, 8192,
          "Llama 3 tiktoken", 3e-4, "llama", False, 131072),
]

#: What a default run is, and how often: a fine-tune on an instruction set, a from-scratch
#: speedrun of a small model (the whole job in minutes, as the public GPT-2 124M speedrun on
#: 8 x H100), or the final stretch of a long pretraining job resumed from its checkpoint.
JOB_KINDS = ["sft"] * 64 + ["speedrun"] * 23 + ["pretrain"] * 13
#: The models each kind draws from; a name listed twice is drawn twice as often.
#: Tokenizers whose vocabulary is smaller than the embedding it is padded into: GPT-NeoX's
#: tokenizer.json holds 50,277 tokens (embedding 50,432), Qwen2's 151,665 (151,936 / 152,064).
TOKENIZER_SIZES = {"GPT-NeoX BPE": 50277, "Qwen2 BPE": 151665}


def tokenizer_size(model):
    return TOKENIZER_SIZES.get(model.tokenizer, model.vocab)


KIND_MODELS = {
    "sft": ["Llama-3.1-8B"] * 4 + ["Qwen2.5-7B"] * 3 + ["Mistral-7B-v0.1", "Gemma-2-9B",
                                                         "Llama-3.1-70B", "Qwen2.5-72B"] * 2
           + ["Llama-3.2-3B", "Gemma-2-27B", "Mixtral-8x7B", "Llama-2-7B", "Llama-2-13B",
              "Falcon-7B", "GPT-NeoX-20B", "Llama-2-70B"],
    "speedrun": ["GPT-2"] * 3 + ["Qwen2.5-0.5B", "Llama-3.2-1B", "GPT-2-XL"],
    "pretrain": ["Llama-3.1-8B", "Qwen2.5-7B", "Mistral-7B-v0.1", "Gemma-2-9B", "Llama-2-13B",
                 "Gemma-2-27B", "Mixtral-8x7B", "Llama-3.1-70B", "Qwen2.5-72B",
                 "Llama-3.1-405B"],
}
#: GPUs a default run of each kind has (pretraining jobs get the cluster their model needs).
KIND_GPU_COUNTS = {"sft": (8, 16, 16, 32, 32, 64), "speedrun": (8, 8, 8, 16, 32)}

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
    Dataset("HuggingFaceFW/fineweb", 0, 15e12, "pretrain", False),
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
#: Methods that train adapters on a frozen base model.
ADAPTER_METHODS = ("lora", "qlora")
#: Strategies that shard a frozen base model across the GPUs too.
SHARDED_BASE = ("FSDP (FULL_SHARD)", "DeepSpeed ZeRO-3")

#: What each --style's software trains: its methods, the sharding strategies it has, and
#: whether it splits layers across GPUs (tensor and pipeline parallel, "3d") or only shards
#: data parallel ("dp": FSDP or ZeRO; Lightning and the HF Trainer have no pipeline stages).
Framework = collections.namedtuple("Framework", "methods strategies layouts")
ALL_STRATEGIES = ("single GPU", "DDP", "FSDP (FULL_SHARD)", "DeepSpeed ZeRO-2",
                  "DeepSpeed ZeRO-3", "3D")
FRAMEWORKS = {
    "classic": Framework(("full", "lora", "qlora", "pretrain"), ALL_STRATEGIES, "3d"),
    "hf": Framework(("full", "lora", "qlora", "pretrain"), ALL_STRATEGIES[:5], "dp"),
    "lightning": Framework(("full", "lora", "qlora", "pretrain"), ALL_STRATEGIES[:5], "dp"),
    "deepspeed": Framework(("full", "lora", "qlora", "pretrain"),
                           ("single GPU", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3"), "dp"),
    "megatron": Framework(("full", "pretrain"), ALL_STRATEGIES, "3d"),
    "torchtitan": Framework(("full", "pretrain"), ("single GPU", "DDP", "FSDP (FULL_SHARD)",
                                                   "3D"), "3d"),
}

# ==========================================================================================
# Models and clusters: what a training job costs, as pure functions of its parts
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
                                 else "Llama 3 tiktoken", 3e-4, "custom", funny,
                                 4096 if vocab == 32000 else 8192))
    if best is None:
        raise ScenarioError("cannot build a model of %s parameters" % format(target_params, ","))
    return best[1]


def find_model(name):
    """The listed model of that name (case-insensitive), or a custom one sized from its name."""
    for model in MODELS:
        if model.name.lower() == name.lower():
            return model
    size = parse_size(name)
    if size is None:
        raise ScenarioError("unknown model '%s': give a listed name (--list-models) or a size "
                            "in the name, e.g. acme-13B" % name)
    if size < 50e6 or size > 2e12:
        raise ScenarioError("model '%s': a size from 50M to 2000B parameters, please" % name)
    return synth_model(name, size, funny=name in FUNNY_MODEL_NAMES)


def cluster_shape(gpus):
    """(nodes, gpus_per_node): 8 per node where possible, as HGX/OAM boxes have."""
    if gpus <= 8:
        return 1, gpus  # one server holds up to eight
    for per_node in (8, 4, 2):
        if gpus % per_node == 0:
            return gpus // per_node, per_node
    return gpus, 1


def flops_per_token(model, seq_len, method):
    """Training FLOPs per token: 6N (4N without weight gradients) plus attention."""
    weight_flops = (4 if method in ADAPTER_METHODS else 6) * model.active
    return weight_flops + 12 * model.layers * model.hidden * seq_len


def lora_params(model, rank):
    """Adapter parameters for LoRA on every linear layer of every block."""
    head_dim = model.hidden // model.heads
    kv_width = model.kv_heads * head_dim
    per_layer = ((2 * model.hidden) * 2 + (model.hidden + kv_width) * 2
                 + 3 * (model.hidden + model.ffn))
    return rank * per_layer * model.layers


def state_bytes_per_gpu(model, method, strategy, gpus, tp, pp):
    """Weights, gradients and optimizer state on one GPU: 16 bytes a parameter for mixed
    precision Adam (the ZeRO paper), sharded as the strategy shards it; Megatron-LM's
    distributed optimizer keeps 6 + 12/DP."""
    n = float(model.params)
    if strategy == "3D":
        dp = gpus // (tp * pp)
        return (6 + 12.0 / dp) * n / (tp * pp)
    if method in ADAPTER_METHODS:
        adapters = 16.0 * lora_params(model, LORA_RANK[method])
        base = 2 * n if method == "lora" else 0.56 * n
        if strategy in SHARDED_BASE:
            base /= gpus
        return base + adapters
    if strategy in ("DDP", "single GPU"):
        return 16 * n
    if strategy == "DeepSpeed ZeRO-2":
        return 2 * n + 14 * n / gpus
    return 16 * n / gpus


def activation_bytes(model, micro_batch, seq_len, tp, pp):
    """Checkpointed activations, one layer's recompute (Korthikanti et al. 2022, 34 bytes a
    token and hidden unit) and fp32 logits for one micro-batch."""
    tokens = micro_batch * seq_len
    layers_here = int(math.ceil(model.layers / float(pp)))
    saved = 2.0 * tokens * model.hidden * layers_here
    recompute = 34.0 * tokens * model.hidden / tp
    logits = 8.0 * tokens * model.vocab / tp if pp == 1 else 0.0
    return saved + recompute + logits


def memory_gib(model, method, strategy, gpus, tp, pp, micro_batch, seq_len):
    """Reserved memory per GPU in GiB: state + activations + runtime overhead."""
    total = (state_bytes_per_gpu(model, method, strategy, gpus, tp, pp)
             + activation_bytes(model, micro_batch, seq_len, tp, pp))
    return total / GIB + RUNTIME_OVERHEAD_GIB


def pretraining_seq_len(model):
    """Llama 3 pretrains at 8K; the older families at 4K."""
    return min(8192 if model.vocab == 128256 else 4096, model.context)


def parallel_layout(model, method, strategy, gpu, gpus, per_node):
    """(tp, pp): tensor parallel inside a node, pipeline across, for a 3D layout; 1, 1 for
    the data-parallel strategies; None when even the largest layout does not fit."""
    if strategy != "3D":
        return 1, 1
    tp = 1
    pp = 1
    while (memory_gib(model, method, "3D", gpus, tp, pp, 1, pretraining_seq_len(model))
           > MEMORY_HEADROOM * gpu.capacity_gib):
        if tp < min(8, per_node):
            tp *= 2
        elif pp < 32 and gpus % (tp * pp * 2) == 0:
            pp *= 2
        else:
            return None
        if gpus % (tp * pp):
            return None
    return tp, pp


def strategy_options(method, gpus, framework):
    """Sharding strategies a sensible engineer would pick for this method, among those the
    framework has: pretraining splits layers (3D) where it can, else shards fully."""
    if gpus == 1:
        options = ["single GPU"]
    elif method == "pretrain":
        options = ["3D"] if framework.layouts == "3d" else ["FSDP (FULL_SHARD)",
                                                            "DeepSpeed ZeRO-3"]
    elif method == "full":
        options = ["FSDP (FULL_SHARD)", "DeepSpeed ZeRO-3", "DeepSpeed ZeRO-2", "DDP"]
    else:
        # FSDP shards the frozen (or 4-bit) base too: how 70B-405B adapters fit on one node.
        options = ["DDP", "FSDP (FULL_SHARD)", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3"]
    return [option for option in options if option in framework.strategies]


def best_micro_batch(model, method, strategy, gpu, gpus, tp, pp, seq_len):
    """Largest power-of-two micro-batch that fits; 0 when even one sequence does not."""
    micro = 0
    for candidate in (1, 2, 4, 8, 16):
        if (memory_gib(model, method, strategy, gpus, tp, pp, candidate, seq_len)
                <= MEMORY_HEADROOM * gpu.capacity_gib):
            micro = candidate
    return micro


def pretraining_batch_tokens(model):
    """Tokens per optimizer step a pretraining job of this size uses: 0.5-4M up to 13B
    parameters, 4M for Llama 2 70B, 8M and more for Llama 3 405B (their papers)."""
    if model.params < 3e9:
        return 0.5e6
    if model.params < 20e9:
        return 2e6
    if model.params < 100e9:
        return 4e6
    return 8e6


def pretraining_gpus(model, gpu):
    """Smallest power-of-two cluster (64 or more) that fits the job with steps of <= 8 s."""
    per_gpu = 0.4 * gpu.peak_flops / flops_per_token(model, pretraining_seq_len(model),
                                                     "pretrain")
    gpus = 64
    while gpus < MAX_GPUS and (
            parallel_layout(model, "pretrain", "3D", gpu, gpus, 8) is None or
            pretraining_batch_tokens(model) / (per_gpu * gpus) > 8.0):
        gpus *= 2
    return gpus


def pick_method(rng, model, gpu, gpus, pretrain, framework):
    """A method, strategy and (tp, pp) under which the model fits, among what the framework
    trains; None if nothing does."""
    per_node = cluster_shape(gpus)[1]
    methods = ["pretrain"] if pretrain else ["full", "full", "lora", "qlora"]
    if gpus > 8:
        # QLoRA is how a model fits on a few GPUs; on a cluster it is only the last resort.
        methods = [m for m in methods if m != "qlora"]
    methods = [m for m in methods if m in framework.methods]
    order = []
    while methods:
        pick = rng.choice(methods)
        methods = [m for m in methods if m != pick]
        order.append(pick)
    if not pretrain:
        order += [m for m in ("full", "lora", "qlora")
                  if m not in order and m in framework.methods]
    for method in order:
        strategies = strategy_options(method, gpus, framework)
        if not strategies:
            continue
        first = rng.choice(strategies)
        for strategy in [first] + [s for s in strategies if s != first]:
            layout = parallel_layout(model, method, strategy, gpu, gpus, per_node)
            seq_len = pretraining_seq_len(model) if method == "pretrain" else 512
            if layout and best_micro_batch(model, method, strategy, gpu, gpus, layout[0],
                                           layout[1], seq_len):
                return method, strategy, layout
    return None


def smallest_cluster(model, gpu, pretrain, framework):
    """Fewest GPUs (powers of two) on which some method fits this model."""
    gpus = 1
    while gpus <= MAX_GPUS:
        # Whether anything fits does not depend on the order tried: any stream will do.
        if pick_method(random.Random(0), model, gpu, gpus, pretrain, framework) is not None:
            return gpus
        gpus *= 2
    return None


# ==========================================================================================
# The scenario: one run's every field, declared once, and the figures they imply
# ==========================================================================================

#: The random streams of a run, all derived from its seed here: the scenario is drawn from
#: the seed itself; the plot, the pacing of lines, the identity of the job's processes and
#: the pick of `--style random` each draw from a stream of their own, so that a style that
#: prints more or fewer lines still draws the same numbers.
RANDOM_STREAMS = {"scenario": None, "plot": 17, "pacing": 18, "identity": 19, "style": 23}


def random_stream(seed, name):
    """The run's random stream of that name (RANDOM_STREAMS)."""
    offset = RANDOM_STREAMS[name]
    return random.Random(seed if offset is None else seed * 7919 + offset)


#: What tells this job's processes from another's: the cluster network's subnet, the
#: launcher's and first worker's pids, NCCL's init thread, communicator address and id,
#: how many launches came before a resumed job (Lightning's log version), the power of two
#: a resumed fp16 checkpoint restores as its loss scale, and the allocator's slack (MB).
Identity = collections.namedtuple(
    "Identity", "subnet launcher_pid worker_pid init_tid comm comm_id launches "
                "loss_scale_power allocator_slack_mb rank_pids rank_tids rank_comms")

#: Local ranks a node runs at most (8 GPUs per HGX/OAM node), each a process of its own.
MAX_LOCAL_RANKS = 8


def draw_identity(seed, subnet=None):
    """The job's identity: process ids from their own stream, the rest from the seed; a
    session's later jobs keep the first one's subnet."""
    ids = random_stream(seed, "identity")
    launcher_pid = ids.randint(20000, 3999999)
    worker_pid = launcher_pid + ids.randint(40, 90)
    init_tid = worker_pid + ids.randint(120, 400)
    comm = 0x550000000000 + ids.randint(0, 0xffffffffff) * 16
    comm_id = ids.getrandbits(64)
    # torchrun starts the local ranks one after another, other processes' pids between them;
    # each process has its own heap, so its communicator lives at an address of its own.
    rank_pids = [worker_pid]
    for _ in range(MAX_LOCAL_RANKS - 1):
        rank_pids.append(rank_pids[-1] + ids.randint(1, 9))
    rank_tids = (init_tid,) + tuple(pid + ids.randint(280, 900) for pid in rank_pids[1:])
    rank_comms = (comm,) + tuple(0x550000000000 + ids.randint(0, 0xffffffffff) * 16
                                 for _ in range(MAX_LOCAL_RANKS - 1))
    return Identity(subnet or (seed % 7 + 1, seed % 200), launcher_pid, worker_pid, init_tid,
                    comm, comm_id, 1 + seed % 5, 14 + seed % 4, 2 * (seed % 256),
                    tuple(rank_pids), rank_tids, rank_comms)


#: What a session keeps from run to run: the allocation's GPUs, its hosts and its network.
Cluster = collections.namedtuple("Cluster", "gpu_key gpus hosts subnet")


class Scenario:
    """One run, drawn whole from its seed; every figure on screen derives from these fields.

    Each field is declared once below, grouped by the planner that computes it. A planner
    hands back a namedtuple whose fields are named like these, and fill() assigns it: each
    field is set exactly once, and a finished draw has all of them."""

    __slots__ = (
        # --- the job on its cluster (draw_job) ------------------------------------------
        #: The seed every random stream of the run derives from (random_stream).
        "seed",
        #: sft (a fine-tune), speedrun (a small model pretrained from scratch, the whole
        #: job) or pretrain (the final stretch of a long pretraining job, resumed).
        "kind",
        #: GPU type (a GPUS entry) and how many.
        "gpu", "gpus",
        #: Servers, and GPUs in each (cluster_shape).
        "nodes", "per_node",
        #: The model trained (a Model).
        "model",
        #: full, lora, qlora (fine-tunes) or pretrain.
        "method",
        #: Sharding: single GPU, DDP, FSDP (FULL_SHARD), DeepSpeed ZeRO-2/3, or 3D (layers
        #: split tensor and pipeline parallel, Megatron-LM's distributed optimizer).
        "strategy",
        #: Tensor, pipeline and data parallel degrees: tp * pp * dp == gpus.
        "tp", "pp", "dp",
        #: Mixed precision: bf16, or fp16 with dynamic loss scaling (some A100 jobs).
        "precision",
        #: Model FLOP utilisation the compute reaches, before waiting on the network.
        "mfu",
        # --- throughput and batch (batch_for) ------------------------------------------
        #: Tokens per sequence.
        "seq_len",
        #: Training FLOPs per token (flops_per_token).
        "flops_per_token",
        #: Tokens per second the cluster's compute alone would reach.
        "compute_tokens_per_s",
        #: Sequences per GPU per micro-step, and micro-steps per optimizer step.
        "micro_batch", "grad_accum",
        #: Sequences per optimizer step across the cluster.
        "global_batch",
        #: Tokens per second reached, collectives included.
        "cluster_tokens_per_s",
        #: Reserved memory per GPU in GiB while training.
        "memory_gib",
        #: Optimizer steps per progress update when steps are short.
        "log_every",
        #: Progress updates per optimizer step when steps are long (micro-steps shown).
        "micro_updates",
        # --- the schedule of the whole job (plan_finetune, plan_speedrun, plan_resumed) --
        #: Peak and final learning rate, and the decay after warmup: cosine, linear, or wsd
        #: (warmup, stable, then a linear decay over the last decay_steps).
        "peak_lr", "min_lr", "schedule", "decay_steps",
        #: Epochs, optimizer steps in each, in the whole job, and of warmup.
        "epochs", "steps_per_epoch", "total_steps", "warmup_steps",
        #: The job's evaluation and checkpoint intervals, in steps, as configured.
        "eval_interval", "save_interval",
        # --- the data ------------------------------------------------------------------
        #: The dataset (a Dataset): an instruction set or a pretraining corpus.
        "dataset",
        #: Examples used (a subset of an instruction set, or all; 0 for a corpus), and the
        #: sequences they pack into.
        "examples", "packed_samples",
        #: Whether it is an instruction set (validation adds BLEU and ROUGE-L).
        "instruction_set",
        #: Validation examples held out (0 for a corpus: eval iterations instead).
        "val_samples",
        # --- the loss curve ------------------------------------------------------------
        #: sft, fresh (pretraining from scratch) or pretrain (a resumed job's late tail).
        "loss_curve",
        #: sft and fresh: the loss at the first step.
        "loss_start",
        #: sft: the level the fast fall settles at, its time constant in steps, and the
        #: drop at each new epoch (None for pretraining).
        "loss_plateau", "loss_tau", "epoch_drop",
        #: pretraining: the irreducible loss, and the power-law coefficient of a resumed job.
        "loss_floor", "loss_coefficient",
        #: fresh: tokens after which half the way to the floor is gone (None otherwise).
        "loss_tokens_half",
        #: wsd: how far the final learning-rate decay brings the loss down (0 otherwise).
        "cooldown_drop",
        #: Step-to-step noise of the loss (shrinks with the batch).
        "noise",
        #: Gradient norm at the start and where it settles.
        "grad_norm_start", "grad_norm_end",
        # --- the session: the part of the job this run shows ---------------------------
        #: First optimizer step shown (1 unless the job resumes from a checkpoint).
        "first_step",
        #: Steps between the evaluations shown, and how many such segments.
        "eval_every", "segment_count",
        #: Training time of the job before this session (0 for a fresh job).
        "resumed_seconds",
        # --- storage (draw_storage) ----------------------------------------------------
        #: Sustained checkpoint write rate of one node to the shared file system, and of a
        #: single process writing the final model (GB/s).
        "node_write_gbs", "rank0_write_gbs",
        #: Whether checkpoints are staged to host memory and written in the background.
        "checkpoint_async",
        # --- the story -----------------------------------------------------------------
        #: Checkpoint directory, `{epoch}` filled by checkpoint_dir().
        "checkpoint_root",
        #: Rare events (Event), in step order.
        "events",
        # --- the timeline: seconds of each phase at --speed 1 (plan_timeline) ----------
        #: Start-up, the gap before training, the first step's warm-up, the export.
        "init_s", "start_gap_s", "first_step_extra_s", "export_s",
        #: The training segments (Segment), each followed by validation (and a checkpoint
        #: where the job saves).
        "segments",
        # --- names (name_cluster) ------------------------------------------------------
        #: Node host names, and the rendezvous port.
        "hosts", "master_port",
        #: The job's processes and network (Identity).
        "identity",
    )

    def fill(self, part):
        """Assign a planner's namedtuple to the fields of the same names, each only once."""
        for name, value in zip(part._fields, part):
            if hasattr(self, name):
                raise AttributeError("Scenario.%s is assigned twice" % name)
            setattr(self, name, value)

    # --- derived figures: one place each ---------------------------------------------
    @property
    def tokens_per_step(self):
        return self.global_batch * self.seq_len

    @property
    def step_seconds(self):
        return self.tokens_per_step / float(self.cluster_tokens_per_s)

    @property
    def tflops_per_gpu(self):
        return tflops_per_gpu(self, self.cluster_tokens_per_s)

    @property
    def mfu_reached(self):
        """Model FLOP utilisation at the throughput the run reaches."""
        return self.tflops_per_gpu * 1e12 / self.gpu.peak_flops

    @property
    def last_step(self):
        """Every session runs to the end of its job."""
        return self.total_steps

    @property
    def session_steps(self):
        return self.last_step - self.first_step + 1

    @property
    def resumed(self):
        """Whether the session picks up a job from its checkpoint."""
        return self.first_step > 1

    @property
    def adapters(self):
        """Whether only LoRA/QLoRA adapters train (the base model is frozen)."""
        return self.method in ADAPTER_METHODS

    @property
    def cluster_name(self):
        return "%d x %s, %s" % (self.gpus, self.gpu.short, plural(self.nodes, "node"))

    def epoch_of(self, step):
        """Epoch (1-based) that optimizer step `step` belongs to."""
        return min(self.epochs, max(1, (step - 1) // self.steps_per_epoch + 1))

    def cluster(self):
        """What a session's next job keeps: the allocation's GPUs, hosts and network."""
        return Cluster(self.gpu.key, self.gpus, self.hosts, self.identity.subnet)

    def checkpoint_dir(self, epoch):
        """The checkpoint directory of an epoch (most names do not depend on it)."""
        return self.checkpoint_root.format(epoch=epoch)


def plural(count, noun, suffix="s"):
    """`1 node`, `2 nodes`, `3 batches`."""
    return "%d %s" % (count, noun if count == 1 else noun + suffix)


def tflops_per_gpu(sc, tokens_per_s):
    """Model TFLOP/s per GPU at a cluster throughput (recompute not counted, as MFU wants)."""
    return sc.flops_per_token * tokens_per_s / sc.gpus / 1e12


#: Events that skip their optimizer step: the update is not applied.
SKIPPING_EVENTS = ("nan", "overflow")


def scheduler_steps(sc, step):
    """The LR scheduler's own count after `step`: it does not advance on an update that was
    skipped (a NaN loss, an fp16 overflow), as HF and Megatron both do."""
    return step - sum(1 for event in sc.events
                      if event.kind in SKIPPING_EVENTS and event.step <= step)


def lr_at(sc, step, spike_cuts=False):
    """Learning rate after optimizer step `step` (1-based, counted over the whole job).
    spike_cuts: the training script halves the LR for good after each loss spike."""
    scale = lr_scale_at(sc, step) if spike_cuts else 1.0
    step = scheduler_steps(sc, step)
    if step <= sc.warmup_steps:
        lr = sc.peak_lr * step / float(max(1, sc.warmup_steps))
    else:
        lr = sc.min_lr + (sc.peak_lr - sc.min_lr) * decay_shape(sc, step)
    return lr * scale


def decay_shape(sc, step):
    """The share of (peak - min) LR left after warmup: cosine or linear over the rest of
    the job, or for wsd constant until the last decay_steps, then linear to min."""
    if sc.schedule == "wsd":
        decay_start = sc.total_steps - sc.decay_steps
        return 1.0 - min(1.0, max(0.0, (step - decay_start) / float(sc.decay_steps)))
    progress = (step - sc.warmup_steps) / float(max(1, sc.total_steps - sc.warmup_steps))
    progress = min(1.0, progress)
    if sc.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def lr_scale_at(sc, step):
    """Product of the LR reductions announced before this step (a spike at step s halves
    the LR from step s + 1 on)."""
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
        # Near ln(vocab) while the LR warms up, then a power-law fall in tokens seen: the
        # public GPT-2 124M speedrun logs 4.64 after 49M tokens and 3.28 after 696M.
        warmup = max(1, sc.warmup_steps)
        ramp = min(step, warmup)
        tokens = (ramp * (ramp + 1) / (2.0 * warmup) + max(0, step - warmup)) * (
            sc.tokens_per_step)
        return sc.loss_floor + (sc.loss_start - sc.loss_floor) / (
            1.0 + (tokens / sc.loss_tokens_half) ** 0.58)
    # A resumed pretraining job: a slow power-law decline in tokens seen (Chinchilla), and
    # the drop a final learning-rate decay brings, deepening as the LR falls (a WSD cooldown
    # drops the loss sharply: Hagele et al. 2024, arXiv:2405.18392).
    tokens = float(step) * sc.tokens_per_step
    cooled = 0.0
    if sc.schedule == "wsd":
        cooled = sc.cooldown_drop * (1.0 - decay_shape(sc, step)) ** 1.3
    return sc.loss_floor + sc.loss_coefficient / tokens ** 0.28 - cooled


def spike_boost(sc, step):
    """Extra loss from any spike before `step`, decaying over ~25 steps."""
    boost = 0.0
    for event in sc.events:
        if event.kind == "spike" and step >= event.step:
            boost += event.size * math.exp(-(step - event.step) / 6.0)
    return boost


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
    """Validation loss: near train loss for pretraining; above it in later SFT epochs; a
    recent spike shows in it too."""
    expected = expected_loss(sc, step) + spike_boost(sc, step)
    if sc.loss_curve == "sft":
        epoch = sc.epoch_of(step)
        # Later epochs memorise: train loss steps down, validation loss barely moves.
        gap = 0.04 + (sc.epoch_drop + 0.10) * 0.95 * (epoch - 1)
        return expected + gap + noise_rng.gauss(0.0, 0.01)
    return expected + 0.01 + noise_rng.gauss(0.0, 0.005)


def token_accuracy(loss):
    """Top-1 next-token accuracy that goes with a loss: ~72% at 1.0, ~48% at 2.2, ~19% at 5."""
    return math.exp(-0.33 * loss)


def validation_size(sc):
    """(samples, batches, eval iterations or None): one validation set for the whole run,
    sized so a forward pass over it (3x the training rate) fits the shortest validation;
    batches are the eval dataloader's (micro-batch per data-parallel rank)."""
    forward_tokens_per_s = 3.0 * sc.cluster_tokens_per_s
    shortest = min(seg.validation_s for seg in sc.segments)
    iters = None
    if sc.loss_curve == "sft":
        fit = int(shortest * 0.5 * forward_tokens_per_s / sc.seq_len)
        samples = max(8, min(sc.val_samples, fit))
    else:
        iters = max(1, int(shortest * 0.6 * forward_tokens_per_s / sc.tokens_per_step))
        samples = iters * sc.global_batch
    return samples, int(math.ceil(samples / float(sc.micro_batch * sc.dp))), iters


def trainable_params(sc):
    """Parameters the optimizer updates: the adapters for LoRA/QLoRA, else all of them."""
    if sc.method in ADAPTER_METHODS:
        return lora_params(sc.model, LORA_RANK[sc.method])
    return sc.model.params


def checkpoint_bytes(job):
    """(model bytes, optimizer bytes) of one resumable checkpoint: bf16 weights, fp32
    master weights and Adam's m and v; adapters train in fp32 (PEFT upcasts them), so they
    keep no separate master copy."""
    trainable = trainable_params(job)
    if job.method in ADAPTER_METHODS:
        return 4 * trainable, 8 * trainable
    return 2 * trainable, 12 * trainable


def export_bytes(job):
    """Bytes of the exported weights: the bf16 model, or the fp32 adapters for LoRA/QLoRA."""
    return (4 if job.method in ADAPTER_METHODS else 2) * trainable_params(job)


def safetensors_shards(nbytes):
    """How many files save_pretrained splits nbytes into at its 5 GB shard size."""
    return int(math.ceil(nbytes / SAFETENSORS_SHARD_BYTES))


def export_files(sc):
    """File names of the export, as transformers/PEFT name them."""
    if sc.adapters:
        return ["adapter_model.safetensors"]
    shards = safetensors_shards(export_bytes(sc))
    if shards == 1:
        return ["model.safetensors"]
    return ["model-%05d-of-%05d.safetensors" % (i, shards) for i in range(1, shards + 1)]


# --- storage: how long saving takes, from the bytes ---------------------------------------

def sharded_checkpoint(job):
    """Whether every rank writes its own shard of the checkpoint (sharded optimizers);
    else rank 0 writes the whole state (DDP, one GPU)."""
    return job.strategy in ("3D", "FSDP (FULL_SHARD)", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3")


def checkpoint_writers(job):
    """Nodes that write a checkpoint at once."""
    return job.nodes if sharded_checkpoint(job) else 1


def checkpoint_write_seconds(job, node_write_gbs):
    """Seconds a synchronous checkpoint takes: the bytes over the writers' write rate,
    plus the metadata and the barrier that end every save."""
    return (math.fsum(checkpoint_bytes(job)) / GB
            / (checkpoint_writers(job) * node_write_gbs) + 0.15)


def staging_seconds(job):
    """Seconds to copy a node's share of the checkpoint to pinned host memory (an async
    save): device-to-host over PCIe, Gen4 on A100 systems, Gen5 on the newer ones."""
    per_gpu_gbs = 12.0 if job.gpu.key.startswith("a100") else 24.0
    per_node = math.fsum(checkpoint_bytes(job)) / GB / checkpoint_writers(job)
    return per_node / (per_gpu_gbs * job.per_node) + 0.1


def checkpoint_seconds(job, storage):
    """Seconds a checkpoint holds up training: the staging to host memory when it goes
    async, else the whole write."""
    if storage.checkpoint_async:
        return staging_seconds(job)
    return checkpoint_write_seconds(job, storage.node_write_gbs)


def export_seconds(job, rank0_write_gbs):
    """Seconds the final model takes to write from rank 0 (save_pretrained), or 0 when the
    job leaves no export: a resumed pretraining job ends on its checkpoint, and a model too
    large to write in about a minute is left to its checkpoint too."""
    seconds = export_bytes(job) / GB / rank0_write_gbs + 0.1
    return 0.0 if job.kind == "pretrain" or seconds > MAX_EXPORT_SECONDS else seconds


def loading_gib(sc):
    """Memory per GPU while the weights stream in (a fifth of the state, plus runtime)."""
    state = state_bytes_per_gpu(sc.model, "lora" if sc.method == "qlora" else sc.method,
                                sc.strategy, sc.gpus, sc.tp, sc.pp)
    return state / GIB * 0.2 + RUNTIME_OVERHEAD_GIB


def optimizer_gib(sc):
    """Optimizer state per GPU, allocated at the first optimizer step."""
    if sc.adapters:
        return 12.0 * trainable_params(sc) / GIB
    full = state_bytes_per_gpu(sc.model, sc.method, sc.strategy, sc.gpus, sc.tp, sc.pp)
    return full * 0.75 / GIB


# --- the network: collectives against the interconnect's bandwidth ------------------------

def bus_gbs(job):
    """Bus bandwidth (GB/s) one GPU sustains in a ring collective on this cluster."""
    table = INTER_NODE_BUS_GBS if job.nodes > 1 else INTRA_NODE_BUS_GBS
    return table[job.gpu.key]


def collective_bytes(job):
    """Bytes each GPU moves in collectives: (per micro-step, per optimizer step)."""
    if job.gpus == 1:
        return 0.0, 0.0
    n = float(job.model.params)
    ring = (job.gpus - 1.0) / job.gpus
    if job.strategy == "3D":
        # Distributed optimizer: reduce-scatter the gradients, all-gather the parameters.
        return 0.0, 4.0 * n / (job.tp * job.pp) * (job.dp - 1.0) / job.dp
    if job.method in ADAPTER_METHODS:
        adapters = 2.0 * lora_params(job.model, LORA_RANK[job.method])
        base = (2.0 if job.method == "lora" else 0.56) * n
        # FSDP gathers the frozen base for forward and backward of every micro-batch.
        per_micro = 2 * base * ring if job.strategy in SHARDED_BASE else 0.0
        return per_micro, 2 * adapters * ring
    if job.strategy in SHARDED_BASE:
        # All-gather for forward, again for backward, reduce-scatter of the gradients.
        return 3 * 2 * n * ring, 0.0
    return 0.0, 2 * 2 * n * ring  # DDP and ZeRO-2: one all-reduce of the gradients


def overlapped(compute, comm):
    """Time for compute and communication that overlap, but never perfectly."""
    return max(compute, comm) + 0.1 * min(compute, comm)


def step_seconds_for(job, compute, micro, accum):
    """One optimizer step: micro-steps (compute against their collectives), the pipeline
    bubble of accum micro-batches through pp stages, then what is left of the step's own
    collectives after they overlap the last backward pass."""
    seconds = micro * job.dp * compute.seq_len / compute.compute_tokens_per_s
    per_micro, per_step = (b / (bus_gbs(job) * GB) for b in collective_bytes(job))
    bubble = (accum + job.pp - 1.0) / accum
    micro_steps = accum * overlapped(seconds, per_micro) * bubble
    hidden = 0.67 * seconds  # the step's collectives start during the last backward pass
    return micro_steps + max(0.0, per_step - hidden) + 0.1 * min(per_step, hidden)


def collective_ops(sc):
    """The collectives a strategy issues while training (drawn from, weighted by count)."""
    if sc.strategy in SHARDED_BASE:
        return ["AllGather", "AllGather", "ReduceScatter"]
    if sc.strategy in ("DeepSpeed ZeRO-2", "3D"):
        return ["ReduceScatter", "AllGather", "AllReduce"]
    return ["AllReduce"]  # DDP and single-node data parallel: gradients only


def node_address(sc, node):
    """A node's address on the cluster network, stable for the run."""
    return "10.%d.%d.%d" % (sc.identity.subnet + (11 + node,))


def master_address(sc):
    """The rendezvous host (node 0) and its address."""
    return sc.hosts[0], node_address(sc, 0)


def ddp_buckets(sc):
    """Gradient buckets DDP all-reduces: its 25 MB bucket_cap_mb over the bf16 gradients of
    what trains (fixed for a model)."""
    return max(1, int(math.ceil(2.0 * trainable_params(sc) / 25e6)))


# --- the timeline: seconds of each phase -------------------------------------------------

def training_seconds(segments):
    """Planned length of the training loop: steps (slow ones too), validation, checkpoints."""
    return math.fsum(math.fsum(u[2] for u in seg.updates) + seg.validation_s
                     + seg.checkpoint_s + seg.gap_s for seg in segments)


def last_step_seconds(segments):
    """Planned time from the start of training to the end of its last optimizer step."""
    last = segments[-1]
    return training_seconds(segments) - last.validation_s - last.checkpoint_s - last.gap_s


def run_seconds(timeline):
    """Planned length of the whole run at --speed 1 (a scenario is its own timeline)."""
    return (timeline.init_s + timeline.start_gap_s + training_seconds(timeline.segments)
            + timeline.export_s + 1.0)


def update_seconds(sc):
    """Seconds between two progress updates of this scenario."""
    if sc.micro_updates > 1:
        return sc.step_seconds / sc.micro_updates
    return sc.step_seconds * sc.log_every


# ==========================================================================================
# Drawing a scenario: what the user left open is drawn; planners hand back their fields
# ==========================================================================================

#: What the user fixed on the command line (None where the draw is free); style is the
#: framework asked for by name, and cluster what a session keeps from its first run.
Request = collections.namedtuple("Request", "model_name gpus gpu_key humor style cluster")

#: The job on its cluster, before any plan: what every planner reads.
Job = collections.namedtuple(
    "Job", "seed kind gpu gpus nodes per_node model method strategy tp pp dp precision mfu")

#: Throughput the cluster's compute reaches at a sequence length.
Compute = collections.namedtuple("Compute", "seq_len flops_per_token compute_tokens_per_s")


class Batch(collections.namedtuple("Batch", Compute._fields + (
        "micro_batch", "grad_accum", "global_batch", "cluster_tokens_per_s", "memory_gib",
        "log_every", "micro_updates"))):
    """The batch planned for a job; it reads its step as the scenario it becomes does."""
    __slots__ = ()
    tokens_per_step = Scenario.tokens_per_step
    step_seconds = Scenario.step_seconds


Schedule = collections.namedtuple(
    "Schedule", "peak_lr min_lr schedule decay_steps epochs steps_per_epoch total_steps "
                "warmup_steps eval_interval save_interval")
Data = collections.namedtuple(
    "Data", "dataset examples packed_samples instruction_set val_samples")
LossCurve = collections.namedtuple(
    "LossCurve", "loss_curve loss_start loss_plateau loss_tau epoch_drop loss_floor "
                 "loss_coefficient loss_tokens_half noise grad_norm_start grad_norm_end "
                 "cooldown_drop")
Session = collections.namedtuple(
    "Session", "first_step eval_every segment_count resumed_seconds")
#: A whole plan of a job: the parts above, filled into the scenario in this order.
Plan = collections.namedtuple("Plan", "batch schedule data loss session")

Storage = collections.namedtuple("Storage", "node_write_gbs rank0_write_gbs checkpoint_async")
Story = collections.namedtuple("Story", "checkpoint_root events")
#: A rare event: its kind, the step it happens at, a spike's size, a slow step's extra s.
Event = collections.namedtuple("Event", "kind step size extra_s")
Timeline = collections.namedtuple(
    "Timeline", "init_s start_gap_s first_step_extra_s export_s segments")
#: One stretch of training up to an evaluation: its progress updates as (step, micro-step
#: or 0, seconds), then the seconds of the validation, whether a checkpoint follows and its
#: seconds, and the gap after them.
Segment = collections.namedtuple(
    "Segment", "index epoch first_step last_step updates validation_s saves checkpoint_s "
               "gap_s")
Names = collections.namedtuple("Names", "hosts master_port identity")

#: The share of the GPU's MFU band a method's software stack reaches: the band is what tuned
#: pretraining reaches; fine-tuning stacks reach less.
METHOD_MFU = {"pretrain": 1.0, "full": 0.8, "lora": 0.65, "qlora": 0.5}
#: Host name prefixes by vendor (DGX and HGX are NVIDIA's own systems).
HOST_PREFIXES = {"nvidia": ["node", "gpu", "hgx", "dgx", "compute"],
                 "amd": ["node", "gpu", "compute", "mi300x-"]}
#: Tokens per optimizer step of a speedrun: llm.c's GPT-2 124M recipe takes 524,288.
SPEEDRUN_BATCH_TOKENS = 524288
#: Sizes people give a subset (max_train_samples).
ROUND_SUBSETS = (500, 1000, 2000, 2500, 3000, 4000, 5000, 8000, 10000, 15000, 20000, 25000,
                 30000, 40000, 50000, 100000)


def humor_of(rng, humor):
    """A coin for funny names: never (off), always (max), or at the odds asked (some)."""
    def funny(probability):
        return humor == "max" or (humor == "some" and rng.random() < probability)
    return funny


def framework_of(style):
    """What the asked-for style's software trains; the draw is free under classic/random."""
    return FRAMEWORKS.get(style, FRAMEWORKS["classic"])


def trains(framework, sc):
    """Whether a framework can train this run: its method, its sharding, its layout."""
    return (sc.method in framework.methods and sc.strategy in framework.strategies
            and (sc.tp * sc.pp == 1 or framework.layouts == "3d"))


def build_scenario(seed, model_name=None, gpus=None, gpu_key=None, humor="some", style=None,
                   cluster=None):
    """Draw one whole run from the seed. Raises ScenarioError for impossible requests.

    The kind of job is drawn first; what the user left open is redrawn until the run fits
    the show (updates at most a second apart, 2-4 minutes), in another kind of job if what
    was fixed leaves that kind none; what the user fixed is honoured even when its steps
    are slower than that."""
    rng = random_stream(seed, "scenario")
    request = Request(model_name, gpus, gpu_key, humor, style, cluster)
    kind = rng.choice(JOB_KINDS)
    forced = model_name is not None and (cluster is not None
                                         or (gpus is not None and gpu_key is not None))
    failure = None
    closest = None
    for attempt in range(48):
        try:
            sc = draw_scenario(rng, seed, request, kind)
        except ScenarioError as error:
            failure = error
            continue
        if forced or plausible(sc):
            return too_slow_checked(sc)
        # Failing that, the draw whose run is nearest the 2-4 minutes of the show.
        miss = max(0.0, 120.0 - run_seconds(sc), run_seconds(sc) - 240.0)
        if closest is None or miss < closest[0]:
            closest = (miss, sc)
        if attempt % 16 == 15:
            kind = rng.choice([other for other in sorted(set(JOB_KINDS)) if other != kind])
    if closest is None:
        raise failure
    return too_slow_checked(closest[1])


def too_slow_checked(sc):
    """The scenario, unless even one optimizer step is too long for a 5-minute run."""
    if run_seconds(sc) > RUN_HARD_LIMIT_SECONDS:
        raise ScenarioError("%s on %d x %s: one optimizer step takes %.0f s, too long to "
                            "show in a run of at most %d minutes; use more or faster GPUs" % (
                                sc.model.name, sc.gpus, sc.gpu.name, sc.step_seconds,
                                RUN_HARD_LIMIT_SECONDS // 60))
    return sc


def plausible(sc):
    """What an engineer would run, and what fits the show: updates at most a second apart,
    a batch big enough that collectives cost no more than a third of the compute rate,
    segments of 30 s or more, a run of 2-4 minutes, whole fine-tunes (the tail of one shows
    no falling loss), and speedruns of hundreds of steps at least."""
    training = [math.fsum(update[2] for update in seg.updates) for seg in sc.segments]
    return (update_seconds(sc) <= UPDATE_SECONDS[1] + 1e-9
            and sc.cluster_tokens_per_s >= 0.67 * sc.compute_tokens_per_s
            and min(training) >= SEGMENT_SECONDS[0] * 0.9
            and 120.0 <= run_seconds(sc) <= 240.0
            and not (sc.kind == "sft" and sc.resumed)
            and not (sc.kind == "speedrun" and sc.total_steps < 200))


def draw_scenario(rng, seed, request, kind):
    """One draw of GPU, cluster, model, method, data and schedule; may be impossible."""
    funny = humor_of(rng, request.humor)
    gpu, model, gpus, kind = draw_request(rng, request, kind, funny)
    fixed_gpus = request.gpus is not None or request.cluster is not None
    job = draw_job(rng, seed, kind, gpu, model, gpus, fixed_gpus, request.style)
    rates = (rng.uniform(*NODE_WRITE_GBS), rng.uniform(*RANK0_WRITE_GBS))
    plan = plan_job(rng, job, storage_for(job, rates), funny)
    if (job.kind == "sft" and model.params < 3e9
            and plan.session.eval_every * plan.batch.step_seconds < SEGMENT_SECONDS[0] * 0.9):
        # A small model on this cluster finishes any instruction set in seconds: what
        # such a cluster runs for minutes is a pretraining speedrun.
        job = draw_job(rng, seed, "speedrun", gpu, model, job.gpus, True, request.style)
        plan = plan_job(rng, job, storage_for(job, rates), funny)
    sc = Scenario()
    for part in (job, storage_for(job, rates)) + plan:
        sc.fill(part)
    sc.fill(Story(checkpoint_root(rng, sc, funny), plan_events(rng, sc)))
    sc.fill(plan_timeline(rng, sc))
    sc.fill(name_cluster(rng, sc, request.cluster))
    return sc


def draw_request(rng, request, kind, funny):
    """(GPU, model, GPU count, kind of job): what the user fixed, the rest drawn. The
    largest models only train honestly at scale, as the tail of a pretraining job; small
    ones are what a speedrun trains."""
    cluster = request.cluster
    gpu_key = cluster.gpu_key if cluster else request.gpu_key
    gpu = GPUS[gpu_key] if gpu_key else rng.choice(
        [GPUS[k] for k in ("h100", "h100", "h100", "a100", "a100", "h200", "b200", "a100-40g",
                           "mi300x")])
    if request.model_name:
        model = find_model(request.model_name)
    elif funny(0.12):
        model = find_model(rng.choice(FUNNY_MODEL_NAMES))
    else:
        model = find_model(rng.choice(KIND_MODELS[kind]))
    gpus = cluster.gpus if cluster else request.gpus
    if model.params > 100e9 or (gpus or 0) >= 256:
        kind = "pretrain"
    elif model.params < 3e9 and kind == "pretrain":
        kind = "speedrun"
    elif model.params >= 3e9 and kind == "speedrun":
        kind = "sft"
    if not gpus:
        gpus = (pretraining_gpus(model, gpu) if kind == "pretrain"
                else rng.choice(KIND_GPU_COUNTS[kind]))
    return gpu, model, gpus, kind


def draw_job(rng, seed, kind, gpu, model, gpus, fixed_gpus, style):
    """Method, strategy and parallel layout under which the model fits among what the
    framework trains (a cluster the user left open grows until it does), the precision
    and the MFU reached."""
    framework = framework_of(style)
    pretrain = kind != "sft"
    picked = pick_method(rng, model, gpu, gpus, pretrain, framework)
    if picked is None and not fixed_gpus:
        need = smallest_cluster(model, gpu, pretrain, framework)
        if need is None:
            raise ScenarioError("%s fits on no %s cluster of up to %d GPUs" % (
                model.name, gpu.name, MAX_GPUS))
        gpus = max(gpus, need)
        picked = pick_method(rng, model, gpu, gpus, pretrain, framework)
    if picked is None and pretrain:
        pretrain = False
        picked = pick_method(rng, model, gpu, gpus, pretrain, framework)
    if picked is None:
        raise ScenarioError("%s does not fit on %d x %s, %s" % (
            model.name, gpus, gpu.name, "not even with QLoRA" if "qlora" in framework.methods
            else "and --style %s trains whole models only" % style))
    method, strategy, (tp, pp) = picked
    nodes, per_node = cluster_shape(gpus)
    precision = "fp16" if gpu.key.startswith("a100") and rng.random() < 0.25 else "bf16"
    mfu = rng.uniform(*gpu.mfu) * METHOD_MFU[method]
    return Job(seed, kind if method == "pretrain" else "sft", gpu, gpus, nodes, per_node,
               model, method, strategy, tp, pp, gpus // (tp * pp), precision, mfu)


def storage_for(job, rates):
    """The cluster's write rates, and whether this job's checkpoints go async: beyond a few
    seconds of synchronous writing, they are staged to host memory instead."""
    node_write_gbs, rank0_write_gbs = rates
    slow = checkpoint_write_seconds(job, node_write_gbs) > ASYNC_CHECKPOINT_SECONDS
    return Storage(node_write_gbs, rank0_write_gbs, slow)


def plan_job(rng, job, storage, funny):
    """The plan of a job of its kind."""
    if job.kind == "speedrun":
        return plan_speedrun(rng, job, storage)
    if job.kind == "pretrain":
        return plan_resumed(rng, job, storage)
    return plan_finetune(rng, job, storage, funny)


def compute_at(job, seq_len):
    """Tokens per second the cluster computes at the drawn MFU, before any waiting on the
    network (batch_for derives the throughput actually reached)."""
    flops = flops_per_token(job.model, seq_len, job.method)
    return Compute(seq_len, flops, job.mfu * job.gpu.peak_flops / flops * job.gpus)


def batch_for(job, compute, target_step_s, min_accum=1, max_global=None):
    """Micro-batch by memory, accumulation by the step time wanted, updates 0.3-1 s apart;
    the throughput reached is what the step time allows."""
    micro = best_micro_batch(job.model, job.method, job.strategy, job.gpu, job.gpus,
                             job.tp, job.pp, compute.seq_len)
    if micro == 0:
        raise ScenarioError("%s does not fit at sequence length %d" % (
            job.model.name, compute.seq_len))

    def step_s(micro_batch, accum):
        return step_seconds_for(job, compute, micro_batch, accum)

    while micro > 1 and step_s(micro, 1) / job.pp * min_accum > target_step_s:
        micro //= 2
    # Long steps are shown micro-step by micro-step: keep each one under a second.
    while micro > 1 and target_step_s > UPDATE_SECONDS[1] and step_s(micro, 1) / job.pp > 0.8:
        micro //= 2
    accum = max(min_accum, 1)
    while accum < 4096 and step_s(micro, accum + 1) <= target_step_s:
        accum += 1
    if abs(step_s(micro, accum + 1) - target_step_s) < abs(step_s(micro, accum) - target_step_s):
        accum += 1
    if max_global is not None and micro * accum * job.dp > max_global:
        # Fine-tuning batches stay in the tens to hundreds of sequences, however fast.
        while micro > 1 and micro * job.dp > max_global:
            micro //= 2
        accum = max(1, max_global // (micro * job.dp))
    global_batch = micro * accum * job.dp
    batch = Batch(compute.seq_len, compute.flops_per_token, compute.compute_tokens_per_s,
                  micro, accum, global_batch,
                  int(round(global_batch * compute.seq_len / step_s(micro, accum))),
                  memory_gib(job.model, job.method, job.strategy, job.gpus, job.tp, job.pp,
                             micro, compute.seq_len), 1, 1)
    step = batch.step_seconds
    micro_updates = min(accum, int(math.ceil(step / 0.8))) if step > UPDATE_SECONDS[1] else 1
    return batch._replace(log_every=max(1, int(math.ceil(UPDATE_SECONDS[0] / step))),
                          micro_updates=micro_updates)


def fixed_phase_seconds(segments, saves, save_s, export_s):
    """Expected seconds of everything but training: start-up, each segment's validation and
    the gap after it, the checkpoints the job saves, and the final model's export."""
    return (math.fsum(INIT_SECONDS) / 2 + export_s + saves * save_s
            + segments * math.fsum(VALIDATION_SECONDS + PHASE_GAP_SECONDS) / 2)


def segment_target(rng, segments, fixed, longest=SEGMENT_SECONDS):
    """Seconds of training per segment so that the whole run lands inside RUN_SECONDS."""
    lo = max(longest[0], (RUN_SECONDS[0] - fixed) / segments)
    hi = min(longest[1], (RUN_SECONDS[1] - fixed) / segments)
    return rng.uniform(lo, max(lo, hi))


def epochs_for(epoch_s, wanted, fixed_for):
    """2 or 3 epochs, whichever keeps the run inside RUN_SECONDS (the wanted one if both);
    fixed_for(epochs) is the rest of the run's seconds."""
    def fits(epochs):
        return RUN_SECONDS[0] <= fixed_for(epochs) + epochs * epoch_s <= RUN_SECONDS[1]
    if fits(wanted):
        return wanted
    return 3 if fits(3) or epoch_s < 45 else 2


def epoch_seconds(batch, dataset, examples):
    """Seconds for one epoch over `examples` of the dataset, packed to the sequence length."""
    steps = examples * dataset.tokens_per_example // batch.seq_len // batch.global_batch
    return steps * batch.step_seconds


def epoch_steps(batch, dataset, examples, epochs):
    """(packed sequences, steps per epoch, total steps, warmup steps) for `epochs` over
    `examples`: HF Trainer's arithmetic, warmup 3% of the steps."""
    packed = examples * dataset.tokens_per_example // batch.seq_len
    per_epoch = max(1, packed // batch.global_batch)
    total = per_epoch * epochs
    return packed, per_epoch, total, int(math.ceil(0.03 * total))


def finetune_compute(job):
    """The longest sequence (2048 at most, 512 at least) that keeps a step's share of each
    rank's tokens short enough for the show."""
    seq_len = min(2048, job.model.context)
    compute = compute_at(job, seq_len)
    while seq_len > 512 and job.dp * seq_len / float(int(round(
            compute.compute_tokens_per_s))) > 0.45:
        seq_len //= 2
        compute = compute_at(job, seq_len)
    return compute


def pick_instruction_set(rng, batch, target_s, funny):
    """(dataset, examples used): a set whose epoch takes 30 s or more, cut to a round-number
    subset (max_train_samples) when an epoch over all of it would run past a minute."""
    pool = FUNNY_DATASETS if funny(0.15) else SFT_DATASETS
    usable = [d for d in pool if epoch_seconds(batch, d, d.examples) >= SEGMENT_SECONDS[0]]
    dataset = rng.choice(usable or [max(pool, key=lambda d: d.examples *
                                        d.tokens_per_example)])
    examples = dataset.examples
    if epoch_seconds(batch, dataset, examples) > SEGMENT_SECONDS[1]:
        steps = max(1, int(round(target_s / batch.step_seconds)))
        needed = (steps * batch.global_batch + 1) * batch.seq_len / float(
            dataset.tokens_per_example)
        examples = min(examples, min(ROUND_SUBSETS, key=lambda size: abs(size - needed)))
    return dataset, examples


def plan_finetune(rng, job, storage, funny):
    """Epochs over an instruction set, evaluated and saved at each epoch's end; a subset
    when the set is too big for 30-60 s epochs, or the last stretch of a long fine-tune
    when one step is too slow for that."""
    peak_lr = rng.choice([1e-5, 2e-5, 2e-5]) if job.method == "full" else rng.choice(
        [1e-4, 2e-4])
    decay = rng.choice(["cosine", "cosine", "linear"])
    batch = batch_for(job, finetune_compute(job), rng.uniform(0.35, 0.9),
                      max_global=max(job.dp, MAX_FINETUNE_BATCH))
    save_s = checkpoint_seconds(job, storage)
    export_s = export_seconds(job, storage.rank0_write_gbs)

    def fixed_for(epochs):
        return fixed_phase_seconds(epochs, epochs, save_s, export_s)
    wanted = rng.choice([2, 3, 3])
    dataset, examples = pick_instruction_set(rng, batch,
                                             segment_target(rng, wanted, fixed_for(wanted)),
                                             funny)
    per_epoch = epoch_steps(batch, dataset, examples, wanted)[1]
    epochs = epochs_for(per_epoch * batch.step_seconds, wanted, fixed_for)
    packed, per_epoch, total, warmup = epoch_steps(batch, dataset, examples, epochs)
    loss = LossCurve("sft", rng.uniform(1.5, 2.5), rng.uniform(1.0, 1.4),
                     rng.uniform(6, 15) * max(1.0, per_epoch / 60.0), rng.uniform(0.10, 0.22),
                     None, None, None, min(0.05, 0.03 * math.sqrt(1e6 / batch.tokens_per_step)),
                     rng.uniform(1.5, 3.0) if job.method == "full" else rng.uniform(0.8, 2),
                     rng.uniform(0.3, 0.9), 0.0)
    val_samples = max(64, dataset.examples // 50)
    if per_epoch >= 12 and epoch_seconds(batch, dataset, examples) <= SEGMENT_SECONDS[1] * 1.05:
        return Plan(batch, Schedule(peak_lr, 0.0, decay, 0, epochs, per_epoch, total, warmup,
                                    per_epoch, per_epoch),
                    Data(dataset, examples, packed, True, val_samples), loss,
                    Session(1, per_epoch, epochs, 0.0))
    # One step is too slow for whole epochs in a minute: show the end of a long fine-tune.
    packed, per_epoch, total, warmup = epoch_steps(batch, dataset, dataset.examples, epochs)
    schedule, session = plan_finetune_tail(
        rng, batch.step_seconds,
        Schedule(peak_lr, 0.0, decay, 0, epochs, per_epoch, total, warmup, 0, 0),
        fixed_phase_seconds(1, 1, save_s, export_s))
    return Plan(batch, schedule, Data(dataset, dataset.examples, packed, True, val_samples),
                loss, session)


def plan_finetune_tail(rng, step_seconds, schedule, fixed):
    """(schedule, session): the job resumed from its last checkpoint (every save_steps) and
    run to its end; the save interval is the round number that leaves a window of about
    the length the show wants."""
    wanted = max(1, int(round(segment_target(rng, 1, fixed, FINAL_STRETCH_SECONDS)
                              / step_seconds)))

    def window(interval):
        return schedule.total_steps % interval or interval
    interval = min((5, 10, 20, 25, 50, 100, 200, 250, 500, 1000),
                   key=lambda size: abs(min(window(size), schedule.total_steps - 1) - wanted))
    steps = min(window(interval), schedule.total_steps - 1)
    first_step = schedule.total_steps - steps + 1
    # Restarts, evaluations and checkpoints cost a few percent of wall time on long jobs.
    resumed_seconds = (first_step - 1) * step_seconds * rng.uniform(1.03, 1.08)
    return (schedule._replace(eval_interval=interval, save_interval=interval),
            Session(first_step, steps, 1, resumed_seconds))


def plan_speedrun(rng, job, storage):
    """A small model pretrained from scratch, the whole job in the run: llm.c's recipe
    (524,288 tokens a step, cosine to 0) on FineWeb, evaluated every segment, saved at the
    end."""
    model = job.model
    dataset = rng.choice(PRETRAIN_DATASETS[:2])
    compute = compute_at(job, 1024 if model.context <= 1024 else 2048)
    reached = int(round(compute.compute_tokens_per_s))
    batch = batch_for(job, compute, min(SPEEDRUN_BATCH_TOKENS, 8.0 * reached) / reached)
    segment_count = rng.choice([2, 3, 3])
    fixed = fixed_phase_seconds(segment_count, 1, checkpoint_seconds(job, storage),
                                export_seconds(job, storage.rank0_write_gbs))
    eval_every = max(1, int(round(segment_target(rng, segment_count, fixed)
                                  / batch.step_seconds)))
    total = eval_every * segment_count
    schedule = Schedule(model.lr, 0.0, "cosine", 0, 1, total, total,
                        max(1, int(math.ceil(0.05 * total))), eval_every, total)
    # Loss levels calibrated on the GPT-2 speedrun; bigger vocabularies sit higher, bigger
    # models lower at equal tokens.
    floor = (2.9 + 0.25 * math.log(model.vocab / 50257.0)
             - 0.15 * math.log(model.params / 124.4e6) + rng.uniform(-0.05, 0.1))
    loss = LossCurve("fresh", math.log(model.vocab) + rng.uniform(0.0, 0.4), None, None, None,
                     floor, None, 5.3e6,
                     min(0.05, 0.036 * math.sqrt(1.6e6 / batch.tokens_per_step)),
                     rng.uniform(8, 20), rng.uniform(0.3, 0.7), 0.0)
    return Plan(batch, schedule, Data(dataset, 0, 0, False, 0), loss,
                Session(1, eval_every, segment_count, 0.0))


def plan_resumed(rng, job, storage):
    """The final stretch of a long pretraining job: warmup-stable-decay, resumed from the
    checkpoint that ends its stable phase (a save boundary), through the final linear
    decay of the LR to the job's end, its final evaluation and checkpoint. Evaluations and
    saves come every 500-2,000 steps and more, so the window holds only the final ones."""
    model = job.model
    dataset = rng.choice(PRETRAIN_DATASETS)
    compute = compute_at(job, pretraining_seq_len(model))
    reached = int(round(compute.compute_tokens_per_s))
    # The batch is the job's; on a cluster too small for it, fewer tokens per step.
    batch = batch_for(job, compute, min(pretraining_batch_tokens(model), 8.0 * reached)
                      / reached, min_accum=4 * job.pp if job.pp > 1 else 1)
    fixed = fixed_phase_seconds(1, 1, checkpoint_seconds(job, storage), 0.0)
    decay = max(1, int(round(segment_target(rng, 1, fixed, FINAL_STRETCH_SECONDS)
                             / batch.step_seconds)))
    eval_interval = rng.choice([500, 1000, 1000, 2000])
    while eval_interval <= decay:
        eval_interval *= 2
    save_interval = eval_interval * rng.choice([1, 1, 2, 5])
    job_tokens = min(dataset.tokens_per_example, rng.uniform(20, 150) * model.params)
    stable_end = max(2, int(job_tokens // batch.tokens_per_step) // save_interval) * save_interval
    total = stable_end + decay
    grad_norm = rng.uniform(0.25, 0.5)
    # Chinchilla's fit L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 (Hoffmann et al. 2022), its
    # floor raised for vocabularies larger than the 32K it was fitted on.
    floor = 1.69 + 406.4 / model.active ** 0.34 + 0.25 * math.log(model.vocab / 32000.0)
    loss = LossCurve("pretrain", None, None, None, None, floor, 410.7, None,
                     min(0.05, 0.036 * math.sqrt(1.6e6 / batch.tokens_per_step)), grad_norm,
                     grad_norm * 0.85, rng.uniform(0.15, 0.3))
    # Restarts, evaluations and checkpoints cost a few percent of wall time on long jobs.
    resumed_seconds = stable_end * batch.step_seconds * rng.uniform(1.03, 1.08)
    return Plan(batch, Schedule(model.lr, model.lr / 10.0, "wsd", decay, 1, total, total, 2000,
                                eval_interval, save_interval),
                Data(dataset, 0, 0, False, 0), loss,
                Session(stable_end + 1, decay, 1, resumed_seconds))


def checkpoint_root(rng, sc, funny):
    """Where checkpoints go: a sensible run directory, or a silly one under --humor."""
    if funny(0.2):
        return rng.choice(FUNNY_CHECKPOINT_DIRS)
    slug = "%s-%s" % (sc.model.name.lower(), sc.dataset.name.split("/")[-1].lower())
    suffix = {"full": "sft", "lora": "lora", "qlora": "qlora", "pretrain": "pretrain"}
    return "checkpoints/%s-%s" % (slug, suffix[sc.method])


def plan_events(rng, sc):
    """What happens beside the plan, rarely (about one run in five, two in one run of
    twenty-five): a loss spike, a slow step (a straggling rank: the collective waits), and
    with fp16 a batch whose loss is NaN or whose gradients overflow, both skipped by the
    loss scaler. None in the last 15% of the run, so a spike has ~20 steps to settle; fp16
    overflows a few times at the very start, as dynamic loss scaling finds its level."""
    kinds = ["spike"] + (["slow"] if sc.gpus > 1 else [])
    if sc.precision == "fp16":
        kinds += ["nan", "overflow"]
    events = []
    if sc.precision == "fp16" and not sc.resumed:
        events += [Event("overflow", step, 0.0, 0.0) for step in (1, 2, 3)]
    lo = sc.first_step + max(3, sc.session_steps // 10)
    hi = sc.last_step - max(20, int(math.ceil(0.15 * sc.session_steps)))
    roll = rng.random()
    count = 2 if roll < 0.04 else 1 if roll < 0.2 else 0
    for kind in rng.sample(kinds, min(count, len(kinds))) if hi > lo else []:
        step = rng.randint(lo, hi)
        if kind == "spike":
            events.append(Event(kind, step, rng.uniform(0.3, 0.9), 0.0))
        elif kind == "slow":
            events.append(Event(kind, step, 0.0, round(rng.uniform(1.5, 5.0), 2)))
        else:
            events.append(Event(kind, step, 0.0, 0.0))
    events.sort(key=lambda e: e.step)
    return events


def segment_updates(rng, sc, first, last, warmup_s, after_pause):
    """Display updates for steps first..last as (step, micro-step or 0, seconds): 0.3-1 s
    apart. Throughput drifts by a percent or two and jitters from step to step; the first
    update carries warmup_s (a (re)started job's slow first iteration), the first after a
    validation or checkpoint runs 5-15% slow while caches refill, and a slow step carries
    its stall."""
    stalls = dict((e.step, e.extra_s) for e in sc.events if e.kind == "slow")
    drift = rng.uniform(0.985, 1.015)
    updates = []
    if sc.micro_updates > 1:
        for step in range(first, last + 1):
            seconds = sc.step_seconds * drift * rng.uniform(0.996, 1.004)
            for micro in range(1, sc.micro_updates + 1):
                updates.append((step, micro, seconds / sc.micro_updates
                                + (stalls.get(step, 0.0) if micro == sc.micro_updates
                                   else 0.0)))
    else:
        step = first - 1
        while step < last:
            nxt = min(last, step + sc.log_every)
            if last - nxt < sc.log_every:
                nxt = last  # a short remainder joins the final update rather than stand alone
            seconds = (nxt - step) * sc.step_seconds * drift * rng.uniform(0.996, 1.004)
            updates.append((nxt, 0, seconds + math.fsum(
                stalls.get(s, 0.0) for s in range(step + 1, nxt + 1))))
            step = nxt
    step, micro, seconds = updates[0]
    slowed = rng.uniform(1.05, 1.15) if after_pause else 1.0
    updates[0] = (step, micro, seconds * slowed + warmup_s)
    return updates


def plan_timeline(rng, sc):
    """Durations of every phase, fixed up front so the ETA can be exact."""
    init_s = rng.uniform(*INIT_SECONDS)
    # torch.compile, CUDA graphs and NCCL's first collectives make the first step slow.
    first_step_extra_s = rng.uniform(*FIRST_STEP_EXTRA_SECONDS)
    save_s = checkpoint_seconds(sc, sc)
    segments = []
    for index in range(sc.segment_count):
        first = sc.first_step + index * sc.eval_every
        last = min(sc.last_step, first + sc.eval_every - 1)
        saves = sc.kind == "sft" or index == sc.segment_count - 1
        updates = segment_updates(rng, sc, first, last,
                                  first_step_extra_s if index == 0 else 0.0, index > 0)
        segments.append(Segment(index, sc.epoch_of(last), first, last, updates,
                                rng.uniform(*VALIDATION_SECONDS), saves,
                                save_s + rng.uniform(0.3, 0.8) if saves else 0.0,
                                rng.uniform(*PHASE_GAP_SECONDS)))
    # The end: the final model written from rank 0 (if any), the last logs, exit.
    export_s = export_seconds(sc, sc.rank0_write_gbs) + rng.uniform(0.8, 2.0)
    timeline = Timeline(init_s, rng.uniform(*PHASE_GAP_SECONDS), first_step_extra_s,
                        export_s, segments)
    # Whole epochs come in whole steps: lengthen the fixed phases if the run fell short.
    short = SHORTEST_RUN_SECONDS - run_seconds(timeline)
    if short > 0:
        timeline = timeline._replace(init_s=min(INIT_SECONDS[1], init_s + short / 3))
        share = (SHORTEST_RUN_SECONDS - run_seconds(timeline)) / len(segments)
        timeline = timeline._replace(segments=[
            seg._replace(validation_s=min(VALIDATION_SECONDS[1], seg.validation_s + share))
            for seg in segments])
    return timeline


def name_cluster(rng, sc, cluster):
    """Host names (stable for a session), the rendezvous port and the job's identity."""
    if cluster is None:
        prefix = rng.choice(HOST_PREFIXES[sc.gpu.vendor])
        first = rng.randint(1, 40) * 8
        width = 3 if sc.nodes < 1000 else 4
        hosts = ["%s%0*d" % (prefix, width, first + i) for i in range(sc.nodes)]
        subnet = None
    else:
        hosts, subnet = cluster.hosts, cluster.subnet
    return Names(hosts, rng.choice([29500, 29500, 29400, 6000, 23456]),
                 draw_identity(sc.seed, subnet))


# ==========================================================================================
# The plot: the run unfolding phase by phase, as a stream of (line, delay)
#
# The plot draws every value of the run once, updates RunState, and asks the run's voice
# for the lines that word each moment. Delays are seconds of the run's clock; only the
# driver waits them out, and the renderer stamps each line with the time it is shown.
# ==========================================================================================

#: fp16 dynamic loss scaling as a framework runs it: the scale a fresh job starts at, the
#: overflows in a row it absorbs (hysteresis) before it halves the scale, and whether that
#: allowance comes back after each halving.
LossScaling = collections.namedtuple("LossScaling", "initial hysteresis refills")
#: Apex amp: 2^16, halved on every overflow.
APEX_LOSS_SCALING = LossScaling(65536.0, 1, False)
#: DeepSpeed's DynamicLossScaler: initial_scale_power 16, hysteresis 2 (used up once).
DEEPSPEED_LOSS_SCALING = LossScaling(65536.0, 2, False)
#: Megatron-LM: 2^32, hysteresis 2, restored after each halving.
MEGATRON_LOSS_SCALING = LossScaling(4294967296.0, 2, True)

#: One overflow: the scale the step was attempted at, the hysteresis left, the scale after.
ScaleChange = collections.namedtuple("ScaleChange", "attempted hysteresis scale")


def initial_loss_scale(sc, rules):
    """The scale a run starts at: the framework's initial scale, or for a resumed job the
    settled power of two its checkpoint restores."""
    if sc.resumed:
        return 2.0 ** sc.identity.loss_scale_power
    return rules.initial


class LossScaler:
    """The run's fp16 loss scale under one framework's rules; every overflow skips its step."""

    def __init__(self, sc, rules):
        self.rules = rules
        self.scale = initial_loss_scale(sc, rules)
        self.hysteresis = rules.hysteresis

    def overflow(self):
        attempted = self.scale
        if self.hysteresis > 1:
            self.hysteresis -= 1
        else:
            self.scale /= 2
            if self.rules.refills:
                self.hysteresis = self.rules.hysteresis
        return ScaleChange(attempted, self.hysteresis, self.scale)


class RunState:
    """What the run shows right now: the plot updates it, renderers only read it."""

    def __init__(self, sc, loss_scaling=APEX_LOSS_SCALING, counting="epoch"):
        self.sc = sc
        #: What the log's progress figure counts: optimizer steps in the epoch ("epoch"), in
        #: the whole job ("job"), or the epoch's batches, as Lightning's bar does ("batch").
        self.counting = counting
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
        self.train_start = None
        self.train_end = None
        self.loss_history = []
        self.val_history = []
        self.tokens_trained = 0
        self.checkpoints = 0
        self.skipped = 0
        self.loss_scaler = LossScaler(sc, loss_scaling)

    @property
    def eta(self):
        """Seconds left in the training loop (steps, validations, checkpoints)."""
        return self.eta_at(self.clock)

    def eta_at(self, clock):
        """The ETA as of `clock` (a renderer's live clock between two lines); None before
        training starts."""
        if self.train_end is None:
            return None
        return max(0.0, self.train_end - clock)

    @property
    def step_in_epoch(self):
        """Optimizer steps done in the current epoch (what `Step s/T` counts everywhere)."""
        return self.step - (self.epoch - 1) * self.sc.steps_per_epoch

    @property
    def counted(self):
        """(word, done, total) as the log counts them: `Step 30/53` of an epoch, `190/240` of
        a Trainer's whole job, or Lightning's `Epoch 1: 60/106` batches, micro-batches too."""
        sc = self.sc
        if self.counting == "job":
            return "Step", max(0, self.step), sc.total_steps
        if self.counting == "batch":
            done = max(0, self.step_in_epoch) * sc.grad_accum
            if self.micro and sc.micro_updates > 1:
                done += self.micro * sc.grad_accum // sc.micro_updates
            return "Batch", done, sc.steps_per_epoch * sc.grad_accum
        return "Step", max(0, self.step_in_epoch), sc.steps_per_epoch

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

    def record(self, obs):
        """The figures of an optimizer update become the run's current ones."""
        self.loss = obs.loss
        if math.isnan(obs.loss):
            self.loss_text = "nan"
        else:
            self.loss_text = "%.4f" % obs.loss
            self.loss_history.append(float(self.loss_text))
        self.grad_norm = obs.grad_norm
        self.lr = obs.lr
        self.tokens_per_s = obs.tokens_per_s


#: One optimizer update (a group of steps when steps are short): its last step, how many
#: steps it covers, the events in them, the loss, gradient norm, LR and tokens/s observed,
#: the loss scale it ran at and the loss scaler's changes (by event) from its fp16 overflows.
Observation = collections.namedtuple(
    "Observation", "step done events loss grad_norm lr tokens_per_s loss_scale scale_changes")


def observe(sc, step, done, seconds, scaler, rng, software):
    """What an optimizer update of `done` steps ending at `step` shows, having taken
    `seconds`: a NaN batch has a NaN loss, an overflowing one infinite gradients; the loss
    scaler skips both (a script that drops NaN batches itself spares it those). The LR is
    the schedule's, halved after spikes where the training script does that. `software`
    is the voice, whose policies these are."""
    events = [e for e in sc.events if step - done < e.step <= step]
    kinds = set(e.kind for e in events)
    loss = float("nan") if "nan" in kinds else loss_at(sc, step, rng)
    grad_norm = grad_norm_at(sc, step, rng)
    if "nan" in kinds:
        grad_norm = float("nan")
    elif "overflow" in kinds:
        grad_norm = float("inf")  # fp16 overflow: the loss is fine, the scaled gradients not
    loss_scale = scaler.scale
    changes = collections.OrderedDict(
        (event, scaler.overflow()) for event in events if event.kind == "overflow" or (
            event.kind == "nan" and not software.skips_nan_batches))
    return Observation(step, done, events, loss, grad_norm,
                       lr_at(sc, step, software.cuts_lr_on_spikes),
                       done * sc.tokens_per_step / seconds, loss_scale, changes)


def skipped_in(events):
    """How many of these events skipped their optimizer step."""
    return sum(1 for event in events if event.kind in SKIPPING_EVENTS)


#: A collective's measured timing (buckets is set when it is reported as gradient sync).
Collective = collections.namedtuple("Collective", "op size_mb ms alg_gbs bus_gbs buckets")

#: One validation pass: its size, the loss and the generation metrics of instruction sets.
Validation = collections.namedtuple(
    "Validation", "samples batches iters loss loss_text ppl bleu rouge runtime")

#: One checkpoint write: bytes, shards, writers and the seconds it took.
CheckpointWrite = collections.namedtuple(
    "CheckpointWrite", "path model_bytes optim_bytes shards writers asynchronous seconds")


def draw_collective(sc, rng):
    """A collective's timing that agrees with the interconnect's bandwidth."""
    achieved_gbs = bus_gbs(sc) * rng.uniform(0.9, 1.08)
    op = rng.choice(collective_ops(sc))
    if sc.adapters:
        size_mb = max(1.0, 2.0 * trainable_params(sc) / 1e6)
    elif sc.strategy == "DDP":
        size_mb = 25.0  # one of DDP's gradient buckets (bucket_cap_mb)
    else:
        size_mb = rng.choice([128.0, 256.0, 512.0])
    n = sc.gpus
    factor = {"AllReduce": 2.0 * (n - 1) / n, "ReduceScatter": (n - 1.0) / n,
              "AllGather": (n - 1.0) / n, "Broadcast": 1.0}[op] if n > 1 else 1.0
    alg_gbs = achieved_gbs / factor
    ms = size_mb / 1e3 / alg_gbs * 1e3
    # Now and then DDP's whole gradient sync of the step is reported, bucket by bucket.
    buckets = ddp_buckets(sc) if sc.strategy == "DDP" and rng.random() < 0.3 else None
    return Collective(op, size_mb, ms, alg_gbs, achieved_gbs, buckets)


def draw_validation(sc, seg, rng):
    """One validation pass after a segment: its loss, and BLEU/ROUGE-L on instruction sets."""
    samples, batches, iters = validation_size(sc)
    value = val_loss_at(sc, seg.last_step, rng)
    loss_text = "%.4f" % value
    bleu = rouge = None
    if sc.instruction_set:
        bleu = max(5.0, 48.0 - 18.0 * float(loss_text)) + rng.uniform(-1, 1)
        rouge = max(0.2, 0.72 - 0.2 * float(loss_text)) + rng.uniform(-0.01, 0.01)
    return Validation(samples, batches, iters, value, loss_text, math.exp(float(loss_text)),
                      bleu, rouge, seg.validation_s * 0.9)


def checkpoint_write(sc, seg):
    """A checkpoint's bytes, shards and writers, and the seconds it holds up training (the
    staging when it goes async), as the storage planned them."""
    model_bytes, optim_bytes = checkpoint_bytes(sc)
    writers = checkpoint_writers(sc)
    return CheckpointWrite(checkpoint_path(sc, seg.last_step, seg.epoch), model_bytes,
                           optim_bytes, sc.gpus if sharded_checkpoint(sc) else 1, writers,
                           sc.checkpoint_async, checkpoint_seconds(sc, sc))


def checkpoint_path(sc, step, epoch):
    """A run's checkpoint directory for a step, named as the framework would."""
    if sc.method == "pretrain":
        return "%s/iter_%07d" % (sc.checkpoint_dir(epoch), step)
    return "%s/checkpoint-%d" % (sc.checkpoint_dir(epoch), step)


def paced(lines, seconds, pacing_rng):
    """Spread `seconds` over lines with bursts and pauses: most lines come quickly, and the
    lines of one logging block (joined) come in the same instant."""
    weights = [pacing_rng.choice([0.2, 0.3, 0.5, 1.0, 1.0, 2.5]) for _ in lines]
    for index in range(len(lines) - 1):
        if lines[index + 1].joined:
            weights[index] = 0.0
    total = math.fsum(weights)
    if weights and not total:
        weights[-1] = total = 1.0
    for item, weight in zip(lines, weights):
        yield item, seconds * weight / total


def at_once(lines):
    """Lines that come together, without a pause."""
    for item in lines:
        yield item, 0.0


class Plot:
    """One run from start-up to summary, told by `voice`: iterate lines() for the whole
    stream of (line or None, delay); `state` is what it shows at each moment."""

    def __init__(self, sc, voice, launched=False):
        self.sc = sc
        self.voice = voice
        #: Whether the job was just launched by hand at a shell prompt (a session's next job).
        self.launched = launched
        self.state = RunState(sc, voice.loss_scaling, voice.counting)
        self.rng = random_stream(sc.seed, "plot")
        # Its own stream, so a style with more or fewer lines draws the same numbers.
        self.pacing = random_stream(sc.seed, "pacing")
        #: Seconds of the optimizer step under way, its micro-steps so far.
        self.step_so_far = 0.0

    def lines(self):
        yield from self.start()
        for seg in self.sc.segments:
            yield from self.train(seg)
            yield from self.validate(seg)
            yield from self.save(seg)
        yield from self.finish()

    def start(self):
        """Distributed start-up, model, tokenizer, data and configuration; ready to train."""
        sc, state, voice = self.sc, self.state, self.voice
        startup = (voice.launch_lines() if self.launched else []) + voice.startup_lines()
        lines = startup + voice.setup_lines()
        for index, (item, delay) in enumerate(paced(lines, sc.init_s, self.pacing)):
            if index == len(startup):
                state.mem_gib = loading_gib(sc)
            state.warm_towards(0.05, delay)
            yield item, delay
        state.mem_gib = sc.memory_gib if sc.resumed else sc.memory_gib - optimizer_gib(sc)
        ready = voice.ready_lines()
        yield from at_once(ready[:-1])
        yield (ready[-1] if ready else None), sc.start_gap_s

    def train(self, seg):
        """One segment of training: progress updates, GPU grid, NCCL lines and rare events."""
        sc, state = self.sc, self.state
        state.phase = "train"
        if seg.index == 0:
            # The ETA counts down to the last optimizer step, as a progress bar's does.
            state.train_start = state.clock
            state.train_end = state.clock + last_step_seconds(sc.segments)
        yield from self.epoch_start(seg)
        next_grid = state.clock + GRID_EVERY_SECONDS * 0.5
        next_nccl = state.clock + NCCL_EVERY_SECONDS * self.rng.uniform(0.4, 1.0)
        for step, micro, seconds in seg.updates:
            yield None, seconds
            state.warm_towards(1.0, seconds)
            self.step_so_far += seconds
            if micro not in (0, sc.micro_updates):
                yield from self.micro_step(micro)
                continue
            yield from self.update(step, self.step_so_far)
            self.step_so_far = 0.0
            if state.clock >= next_nccl and sc.gpus > 1:
                next_nccl = state.clock + NCCL_EVERY_SECONDS * self.rng.uniform(0.7, 1.3)
                yield from at_once(self.voice.collective_lines(draw_collective(sc, self.rng)))
            if state.clock >= next_grid:
                next_grid = state.clock + GRID_EVERY_SECONDS
                yield from at_once(self.voice.grid_lines(state))

    def epoch_start(self, seg):
        """An epoch that begins with this segment, or the one a resumed session picks up."""
        sc, state = self.sc, self.state
        epoch = sc.epoch_of(seg.first_step)
        if seg.first_step == (epoch - 1) * sc.steps_per_epoch + 1 or seg.index == 0:
            state.epoch = epoch
            yield from at_once(self.voice.epoch_lines(state, seg.first_step))

    def micro_step(self, micro):
        """A gradient-accumulation micro-step inside a long optimizer step."""
        self.state.micro = micro
        if self.state.loss is not None:  # nothing to report before the first optimizer step
            yield from at_once(self.voice.micro_lines(self.state))

    def update(self, step, seconds):
        """An optimizer update ending at `step` (a group of steps when they are short),
        `seconds` after the one before it."""
        sc, state = self.sc, self.state
        done = step - state.step
        state.micro = 0
        state.step = step
        state.epoch = sc.epoch_of(step)
        state.tokens_trained += done * sc.tokens_per_step
        if step - done + 1 == 1:
            state.mem_gib = sc.memory_gib  # optimizer states appear at the first step
        obs = observe(sc, step, done, seconds, state.loss_scaler, self.rng, self.voice)
        state.record(obs)
        yield from at_once(self.voice.update_lines(state, obs))
        for event in obs.events:
            yield from self.event(event, obs.scale_changes.get(event))

    def event(self, event, change):
        """One rare event: its effect on the run and its lines, after the update that shows
        it (a slow step's time is in that update already). The voice is handed the rank it
        happened on and, for an overflow, the loss scaler's change."""
        state = self.state
        rank = self.rng.randint(0, self.sc.gpus - 1)
        if event.kind in SKIPPING_EVENTS:
            state.skipped += 1
        yield from at_once(self.voice.event_lines(state, event, rank, change))

    def validate(self, seg):
        """Validation after a segment; the line marked "val_loss" puts it on the chart."""
        state = self.state
        state.phase = "val"
        val = draw_validation(self.sc, seg, self.rng)

        def shown(mark):
            if mark == "val_loss":
                state.val_history.append((len(state.loss_history), float(val.loss_text)))
        yield from self.phase_lines(self.voice.validation_lines(state, seg, val),
                                    seg.validation_s, 0.85, shown)

    def save(self, seg):
        """A checkpoint after validation where the job saves; it counts once its line
        marked "saved" is shown."""
        state = self.state
        if seg.saves:
            state.phase = "ckpt"
            ckpt = checkpoint_write(self.sc, seg)

            def shown(mark):
                if mark == "saved":
                    state.checkpoints += 1
            yield from self.phase_lines(self.voice.checkpoint_lines(state, seg, ckpt),
                                        seg.checkpoint_s, 0.3, shown)
        yield None, seg.gap_s

    def finish(self):
        """The export (or the framework's ending), then the summary."""
        sc, state = self.sc, self.state
        state.phase = "export"
        lines = self.voice.export_lines(state)
        state.train_end = state.clock
        yield from self.phase_lines(lines, sc.export_s, 0.0)
        state.phase = "done"
        yield from at_once(self.voice.summary_lines(state))

    def phase_lines(self, lines, seconds, load, shown=None):
        """Lines spread over `seconds` while the GPUs work at `load`; shown(mark) as each
        marked line is shown."""
        for item, delay in paced(lines, seconds, self.pacing):
            self.state.warm_towards(load, delay)
            if item.mark and shown:
                shown(item.mark)
            yield item, delay


# ==========================================================================================
# Lines and their formatting: what voices build lines from
# ==========================================================================================

#: One line of the log. kind: info, phase, warn, error, good, progress (redrawn in place on
#: a terminal, a line of its own in a pipe), live (only ever redrawn in place: a bar moving
#: between two optimizer steps), grid or box. tag: the source the plain log shows as `[time] [TAG] `; an empty
#: tag means the text already is the whole line (the summary box, every framework style).
#: mark: what the line means to the run ("val_loss", "saved"), or None. joined: printed in
#: the same instant as the line before it (one logging block).
Line = collections.namedtuple("Line", "text kind tag mark joined")


def line(text, kind="info", tag="", mark=None, joined=False):
    return Line(text, kind, tag, mark, joined)


def block(lines):
    """Lines that one logging call (or one burst of them) prints at once."""
    return lines[:1] + [item._replace(joined=True) for item in lines[1:]]


#: The level name Python's logging prints for a line of each kind.
LOG_LEVELS = {"warn": "WARNING", "error": "ERROR"}


def log_level(kind):
    return LOG_LEVELS.get(kind, "INFO")


# --- time slots: framework lines carry their own timestamp, filled in when shown -----------

#: A slot in a line's text that stamp() replaces with the local time (see time_text).
TIME_SLOT = "\x00%s\x00"
TIME_SLOT_RE = re.compile("\x00([a-z]+)\x00")


def slot(kind):
    return TIME_SLOT % kind


def time_text(kind, now):
    """Local time as a framework prints it: Python logging, glog, Megatron or nvidia-smi."""
    local = time.localtime(now)
    millis = int(now * 1000) % 1000
    if kind == "logging":
        return time.strftime("%Y-%m-%d %H:%M:%S", local) + ",%03d" % millis
    if kind == "glog":
        return time.strftime("%m%d %H:%M:%S", local) + ".%06d" % (millis * 1000)
    if kind == "smi":
        return time.strftime("%a %b %d %H:%M:%S %Y", local)
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def stamp(item, now):
    """The line with its time slots filled in with `now`; lines without slots unchanged."""
    if "\x00" not in item.text:
        return item
    return item._replace(text=TIME_SLOT_RE.sub(lambda m: time_text(m.group(1), now),
                                               item.text))


# --- numbers, sizes and durations ---------------------------------------------------------

def fmt_int(value):
    return "{:,}".format(int(value))


def fmt_duration(seconds):
    """H:MM:SS, with days in front for jobs longer than a day."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    text = "%d:%02d:%02d" % (rest // 3600, rest % 3600 // 60, rest % 60)
    return ("%dd %s" % (days, text)) if days else text


def fmt_eta(seconds):
    """MM:SS under an hour, H:MM:SS above, as tqdm prints it (whole seconds left, rounded
    up; a microsecond of float error does not count)."""
    seconds = int(math.ceil(seconds - 1e-6))
    if seconds >= 3600:
        return fmt_duration(seconds)
    return "%02d:%02d" % (seconds // 60, seconds % 60)


def fmt_bytes(count):
    return "%.2f GB" % (count / GB) if count >= 1e8 else "%.1f MB" % (count / 1e6)


def fmt_params(count):
    return "%.1fB" % (count / 1e9) if count >= 1e9 else "%dM" % int(round(count / 1e6))


def software_stack(sc):
    """One coherent set of versions for the whole run. Blackwell needs what first supported
    it: driver 570, CUDA 12.8, PyTorch 2.7's cu128 wheels, NCCL 2.26 (their release notes)."""
    if sc.gpu.vendor == "amd":
        return {"torch": "2.5.1+rocm6.2", "collective": "RCCL", "nccl": "2.20.5", "cuda": "6.2",
                "runtime": "ROCm", "driver": None, "deepspeed": "0.16.5",
                "transformers": "4.46.3"}
    if sc.gpu.key == "b200":
        return {"torch": "2.7.1+cu128", "collective": "NCCL", "nccl": "2.26.2", "cuda": "12.8",
                "runtime": "CUDA", "driver": "570.133.20", "deepspeed": "0.17.5",
                "transformers": "4.53.2"}
    return {"torch": "2.5.1+cu124", "collective": "NCCL", "nccl": "2.21.5", "cuda": "12.4",
            "runtime": "CUDA", "driver": "550.90.07", "deepspeed": "0.16.5",
            "transformers": "4.46.3"}


def strategy_title(sc):
    """The sharding as its engineer would describe it."""
    if sc.strategy != "3D":
        return sc.strategy
    if sc.tp * sc.pp == 1:
        return "data parallel (DP=%d), distributed optimizer (ZeRO-1)" % sc.dp
    return "Megatron-LM (TP=%d, PP=%d, DP=%d), distributed optimizer" % (sc.tp, sc.pp, sc.dp)


def schedule_text(sc):
    """`cosine decay`, `linear decay`, or for wsd the constant stretch and the final decay."""
    if sc.schedule == "wsd":
        return "constant, then linear decay over the last %s steps (WSD)" % fmt_int(
            sc.decay_steps)
    return "%s decay" % sc.schedule


def method_title(sc):
    """The method without its hyper-parameters: 'LoRA', 'Full fine-tune'."""
    return METHOD_TITLES[sc.method].split(" (")[0]


def writers_text(sc, writers):
    """`16 ranks on 2 nodes in parallel`, or `rank 0` when one process writes it all."""
    if writers == 1:
        return "rank 0"
    nodes = int(math.ceil(writers / float(sc.per_node)))
    return "%d ranks on %s in parallel" % (writers, plural(nodes, "node"))


# --- bars, the progress line, the GPU grid and the summary box ----------------------------

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


def progress_text(state, glyphs):
    """The progress line: `Epoch e/E [bar] p%  Step s/T | Loss ... | ETA: t`."""
    sc = state.sc
    in_epoch = state.step_in_epoch
    if sc.micro_updates > 1 and state.micro:
        in_epoch_done = in_epoch + state.micro / float(sc.micro_updates)
    else:
        in_epoch_done = in_epoch
    # Rounded down, so 100.0% means done and not "almost done" at the tail of a long job.
    pct = math.floor(1000.0 * in_epoch_done / sc.steps_per_epoch) / 10.0
    step_text = "Step %d/%d" % (in_epoch, sc.steps_per_epoch)
    if state.micro and state.micro < sc.micro_updates:
        # The micro-batches after step s are the next step's: name that step.
        step_text += " (step %d: micro-batch %d/%d)" % (
            in_epoch + 1, state.micro * sc.grad_accum // sc.micro_updates, sc.grad_accum)
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
        "%s samples/s" % "{:,.2f}".format(state.tokens_per_s / sc.seq_len),
        "ETA: %s" % fmt_eta(state.eta),
    ]
    return " | ".join(fields)


def unit_noise(*keys):
    """A repeatable number in [0, 1) from integer keys: a small integer hash, no state, so
    any GPU's reading can be computed on its own, in any order."""
    value = 0x9E3779B97F4A7C15
    for key in keys:
        value = ((value ^ key) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return (value & 0xFFFFFF) / float(1 << 24)


def gpu_reading(sc, state, index):
    """(util %, temperature C, power W) of one GPU: its node's airflow and its own place in
    the chassis (fixed for the run) plus a slow jitter; synchronous training keeps a node's
    GPUs within a few degrees and watts of each other."""
    tick = int(state.clock / 2.0)
    node_offset = unit_noise(sc.seed, index // sc.per_node) - 0.5
    gpu_offset = unit_noise(sc.seed, index, 7) - 0.5
    jitter = unit_noise(sc.seed, index, tick) - 0.5
    lo, hi = sc.gpu.temp
    loaded = (lo + hi) / 2.0
    temp = 30 + (loaded - 30) * state.heat + 4 * node_offset + 4 * gpu_offset + 2 * jitter
    util = 0.0
    if state.load:
        util = 100 * state.load - (1 if jitter < -0.3 else 0)
    power = (sc.gpu.idle_watts + (sc.gpu.power_cap * 0.9 - sc.gpu.idle_watts) * state.load
             * (0.97 + 0.05 * jitter) + 12 * gpu_offset + 8 * node_offset)
    return (max(0, min(100, int(round(util)))), int(round(temp)),
            int(round(min(sc.gpu.power_cap, power))))


def gpu_grid_lines(sc, state):
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


def summary_box(sc, state, glyphs):
    """The closing box; every figure is the one already shown."""
    final_loss = state.loss_text
    rows = [
        "Model: %s (%s)" % (sc.model.name, method_title(sc)),
        "Cluster: %s" % sc.cluster_name,
    ]
    if sc.resumed_seconds:
        rows.append("Total time: %s (this session %s)" % (
            fmt_duration(sc.resumed_seconds + state.clock), fmt_duration(state.clock)))
        rows.append("Tokens trained: %s this session (%s since step 0)" % (
            fmt_int(state.tokens_trained), fmt_int(sc.last_step * sc.tokens_per_step)))
    else:
        rows.append("Total time: %s" % fmt_duration(state.clock))
        rows.append("Tokens trained: %s" % fmt_int(state.tokens_trained))
    rows += [
        "Final loss: %s" % final_loss,
        "Final PPL: %.2f" % math.exp(float(final_loss)),
        "Checkpoints: %d saved" % state.checkpoints,
    ]
    width = max(cells(r) for r in rows) + 4
    top_left, top_right, bottom_left, bottom_right = glyphs["corners"]
    title = " Training complete "
    left = (width - len(title)) // 2
    out = [top_left + glyphs["hline"] * left + title + glyphs["hline"] * (
        width - left - len(title)) + top_right]
    for row in rows:
        out.append(glyphs["vline"] + "  " + pad_cells(row, width - 2) + glyphs["vline"])
    out.append(bottom_left + glyphs["hline"] * width + bottom_right)
    return out


# ==========================================================================================
# Voices: the same run in each framework's words
#
# The plot draws every value once and hands it to the run's voice, which only words it. A
# voice returns Lines. Classic lines carry a tag and get the plain log's `[time] [TAG] `
# prefix; framework lines carry their framework's own prefix in the text and an empty tag,
# which tells the plain renderer to print the text as it is. Their timestamps are time
# slots, filled in by stamp() as each line is shown.
# ==========================================================================================

class Voice:
    """The hooks a voice answers, each with the lines for one moment of the run (a hook a
    voice does not answer prints nothing). Values come drawn; a voice keeps only what its
    framework's logger itself would keep between lines.

    startup_lines(), setup_lines(), ready_lines()   start-up, model and data, ready to train
    epoch_lines(state, first_step)    an epoch begins, or a resumed session picks one up
    micro_lines(state)                a gradient-accumulation micro-step of a long step
    update_lines(state, obs)          an optimizer update (an Observation)
    collective_lines(coll), grid_lines(state)   a timed collective (a Collective), the GPUs
    event_lines(state, event, rank, change)     a rare event (an Event) on a rank; change is
                                      the loss scaler's ScaleChange for an overflow
    validation_lines(state, seg, val) a validation (a Validation); marks one line "val_loss"
    checkpoint_lines(state, seg, ckpt)          a checkpoint (a CheckpointWrite); marks the
                                      line at which it is saved "saved"
    export_lines(state), summary_lines(state)   the end of the run
    launch_lines()                    a session's next job, typed at a shell prompt
    """

    name = None
    #: How this framework's fp16 loss scaler behaves.
    loss_scaling = APEX_LOSS_SCALING
    #: What the voice's progress figure counts (RunState.counted); a trainer's own bar and
    #: step counter run over the whole job.
    counting = "epoch"
    #: Whether the training script halves the LR after a loss spike (frameworks do not).
    cuts_lr_on_spikes = False
    #: Whether the training script drops a batch with a NaN loss before its backward pass
    #: (frameworks leave non-finite gradients to the fp16 loss scaler, which skips the step).
    skips_nan_batches = False

    def __init__(self, sc, glyphs):
        self.sc = sc
        self.glyphs = glyphs

    def launch_lines(self):
        return [line(shell_prompt(self.sc) + launch_command(self.name, self.sc))]

    def startup_lines(self):
        return []

    def setup_lines(self):
        return []

    def ready_lines(self):
        return []

    def epoch_lines(self, state, first_step):
        return []

    def micro_lines(self, state):
        return []

    def update_lines(self, state, obs):
        return []

    def collective_lines(self, coll):
        return []

    def grid_lines(self, state):
        return []

    def event_lines(self, state, event, rank, change):
        return []

    def validation_lines(self, state, seg, val):
        return []

    def checkpoint_lines(self, state, seg, ckpt):
        return []

    def export_lines(self, state):
        return []

    def summary_lines(self, state):
        return []


class ClassicVoice(Voice):
    """llmtrain's own dialect: tagged lines, one progress line per update. It is the run's
    own training script, which watches for loss spikes (and halves the LR after one) and
    drops a batch whose loss is NaN."""

    name = "classic"
    cuts_lr_on_spikes = True
    skips_nan_batches = True

    # --- init -----------------------------------------------------------------------
    def startup_lines(self):
        """Distributed start-up, up to the model load."""
        sc = self.sc
        tag = "INIT"
        stack = software_stack(sc)
        host, address = master_address(sc)
        coll = stack["collective"]
        found = line("Found %s across %s" % (plural(sc.gpus, sc.gpu.name + " GPU"),
                                             plural(sc.nodes, "node")), "good", tag)
        if sc.gpus == 1:
            # One GPU needs no process group: no rendezvous, no collectives.
            lines = [line("Single-process training on cuda:0 (torch %s, no process group)" % (
                stack["torch"]), "phase", tag), found]
        else:
            lines = [
                line("Initializing distributed environment (torchrun, rdzv_backend=c10d, "
                     "torch %s)" % stack["torch"], "phase", tag),
                line("%s backend: %s version %s+%s%s, %d GPUs across %s" % (
                    coll, coll, stack["nccl"], stack["runtime"].lower(), stack["cuda"],
                    sc.gpus, plural(sc.nodes, "node")), tag=tag),
                line("Master node: %s (%s), port %d, world size %d" % (
                    host, address, sc.master_port, sc.gpus), tag=tag),
                line("%s algorithm: %s, %d channels, %s" % (
                    coll, "Ring + Tree" if sc.nodes > 1 else "Ring",
                    32 if sc.nodes > 1 else 16,
                    "NET/IB with GPUDirect RDMA" if sc.nodes > 1 else "P2P over NVLink"
                    if sc.gpu.vendor == "nvidia" else "P2P over Infinity Fabric"), tag=tag),
                found,
            ]
        if sc.resumed_seconds:
            lines.append(line("Resuming from %s (step %s, %s of training so far)" % (
                checkpoint_path(sc, sc.first_step - 1, sc.epoch_of(sc.first_step)),
                fmt_int(sc.first_step - 1), fmt_duration(sc.resumed_seconds)), "phase", tag))
        return lines

    def setup_lines(self):
        """Model, tokenizer, data and configuration; the first line loads the weights."""
        return self.model_lines() + self.data_lines() + self.training_lines()

    def model_lines(self):
        sc = self.sc
        tag = "INIT"
        model = sc.model
        lines = [
            line("Loading model: %s" % model.name, tag=tag),
            line("Model config: %d layers, hidden %d, %d heads (%d KV), FFN %d, vocab %s" % (
                model.layers, model.hidden, model.heads, model.kv_heads, model.ffn,
                fmt_int(model.vocab)), tag=tag),
            line("Model size: %s parameters%s" % (
                fmt_int(model.params), "" if model.active == model.params else
                " (%s active)" % fmt_int(model.active)), tag=tag),
        ]
        if sc.adapters:
            adapters = trainable_params(sc)
            lines.append(line("Trainable parameters: %s (%.2f%% of %s)" % (
                fmt_int(adapters), 100.0 * adapters / model.params, fmt_params(model.params)),
                tag=tag))
        lines.append(line("Tokenizer: %s, vocab size %s" % (
            model.tokenizer, fmt_int(tokenizer_size(model))), tag=tag))
        return lines

    def data_lines(self):
        sc = self.sc
        tag = "INIT"
        if sc.loss_curve != "sft":
            tokens = sc.dataset.tokens_per_example
            return [line("Dataset: %s (%s tokens)" % (
                sc.dataset.name, "%.1fT" % (tokens / 1e12) if tokens >= 1e12 else
                "%dB" % (tokens / 1e9)), tag=tag)]
        lines = [line("Dataset: %s (%s examples)" % (sc.dataset.name,
                                                     fmt_int(sc.dataset.examples)), tag=tag)]
        if sc.examples < sc.dataset.examples:
            lines.append(line("Using a subset: max_train_samples=%s" % fmt_int(sc.examples),
                              tag=tag))
        lines.append(line("Packed %s examples into %s sequences of %s tokens" % (
            fmt_int(sc.examples), fmt_int(sc.packed_samples), fmt_int(sc.seq_len)), tag=tag))
        return lines

    def training_lines(self):
        sc = self.sc
        tag = "INIT"
        lines = [
            line("Batch: %s (global), %d (per GPU)" % (fmt_int(sc.global_batch),
                                                       sc.micro_batch), tag=tag),
            line("Gradient accumulation: %s, %s tokens per optimizer step" % (
                plural(sc.grad_accum, "step"), fmt_int(sc.tokens_per_step)), tag=tag),
            line("Sequence length: %d" % sc.seq_len, tag=tag),
            line("Optimizer: AdamW, peak LR %.1e, warmup %s steps, %s to %s" % (
                sc.peak_lr, fmt_int(sc.warmup_steps), schedule_text(sc),
                "0" if sc.min_lr == 0 else "%.1e" % sc.min_lr), tag=tag),
            line("Epochs: %d, steps per epoch: %s, total steps: %s" % (
                sc.epochs, fmt_int(sc.steps_per_epoch), fmt_int(sc.total_steps)), tag=tag),
        ]
        if sc.eval_every != sc.steps_per_epoch:
            lines.append(line("Evaluation every %s steps, checkpoint every %s steps" % (
                fmt_int(sc.eval_interval), fmt_int(sc.save_interval)), tag=tag))
        return lines + [
            line("Mixed precision: %s%s" % (sc.precision, self.scaling_text()), tag=tag),
            line("Strategy: %s, activation checkpointing" % strategy_title(sc), tag=tag),
            line("Training method: %s" % METHOD_TITLES[sc.method], tag=tag),
            line("Expected throughput: %s tok/s (%.1f TFLOP/s per GPU, MFU %.1f%%)" % (
                fmt_int(sc.cluster_tokens_per_s), sc.tflops_per_gpu,
                100.0 * sc.mfu_reached), tag=tag),
        ]

    def scaling_text(self):
        sc = self.sc
        if sc.precision != "fp16":
            return ""
        scale = initial_loss_scale(sc, self.loss_scaling)
        if sc.resumed:
            return " (dynamic loss scaling, scale %d restored from the checkpoint)" % scale
        return " (dynamic loss scaling, initial scale %d)" % scale

    def ready_lines(self):
        return [line("Ready to train!", "good", "INIT")]

    # --- training -------------------------------------------------------------------
    def epoch_lines(self, state, first_step):
        """An epoch starting, or (a resumed job) picking up in the middle of one."""
        sc = self.sc
        epoch_first = (state.epoch - 1) * sc.steps_per_epoch + 1
        if first_step > epoch_first:
            return [line("Epoch %d/%d resumed at step %s of %s (%s steps to go)" % (
                state.epoch, sc.epochs, fmt_int(first_step - epoch_first + 1),
                fmt_int(sc.steps_per_epoch), fmt_int(sc.last_step - first_step + 1)),
                "phase", "TRAIN")]
        return [line("Epoch %d/%d: %s steps of %s tokens" % (
            state.epoch, sc.epochs, fmt_int(sc.steps_per_epoch), fmt_int(sc.tokens_per_step)),
            "phase", "TRAIN")]

    def micro_lines(self, state):
        """A gradient-accumulation micro-step inside a long optimizer step: the progress
        line moves in place, and is no new log line."""
        return [line(progress_text(state, self.glyphs), "live", "TRAIN")]

    def update_lines(self, state, obs):
        return [line(progress_text(state, self.glyphs), "progress", "TRAIN")]

    def collective_lines(self, coll):
        sc = self.sc
        name = software_stack(sc)["collective"]
        if coll.buckets is not None:
            return [line("Gradients synchronized across %d ranks (%d buckets, %.1f ms "
                         "overlapped with backward)" % (sc.gpus, coll.buckets, coll.ms * 4),
                         "info", name)]
        return [line("%s %s: %.1f MB in %.2f ms (algbw %.1f GB/s, busbw %.1f GB/s)" % (
            name, coll.op, coll.size_mb, coll.ms, coll.alg_gbs, coll.bus_gbs), "info", name)]

    def grid_lines(self, state):
        return [line(text, "grid", "GPU") for text in gpu_grid_lines(self.sc, state)]

    def event_lines(self, state, event, rank, change):
        """What the script notices: a spike (it halves the LR from the next step on), a NaN
        loss (the batch is dropped), and Apex's own line for an fp16 overflow. A slow step
        shows only as a slow step."""
        sc = self.sc
        if event.kind == "spike":
            return [line("Loss spike at step %s: loss %s vs running mean %.4f, grad norm %.3f; "
                         "reducing LR by 50%% for the rest of the run (LR now %.3e)" % (
                             fmt_int(event.step), state.loss_text,
                             expected_loss(sc, event.step), state.grad_norm,
                             lr_at(sc, event.step + 1, True)), "warn", "TRAIN")]
        if event.kind == "nan":
            return [line("NaN loss on rank %d at step %s: batch skipped, optimizer step not "
                         "applied (skipped %d)" % (rank, fmt_int(event.step), state.skipped),
                         "warn", "TRAIN")]
        if event.kind == "overflow":
            return [line("Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale "
                         "to %.1f" % change.scale, "warn", "AMP")]
        return []

    # --- validation, checkpoints, export, summary -----------------------------------
    def validation_lines(self, state, seg, val):
        sc = self.sc
        tag = "EVAL"
        if val.iters is None:
            header = "Running validation: %s samples, %s of %d" % (
                fmt_int(val.samples), plural(val.batches, "batch", "es"),
                sc.micro_batch * sc.dp)
        else:
            header = "Running validation: %s samples (%s of %s)" % (
                fmt_int(val.samples), plural(val.iters, "eval iteration"),
                fmt_int(sc.global_batch))
        lines = [line(header, "phase", tag)]
        for quarter in (1, 2, 3, 4):
            lines.append(line("Validation %3d%% (%s/%s samples)" % (
                25 * quarter, fmt_int(val.samples * quarter // 4), fmt_int(val.samples)),
                "info", tag))
        lines.append(line("Val Loss: %s  |  Val PPL: %.2f  |  Accuracy: %.1f%%" % (
            val.loss_text, val.ppl, 100 * token_accuracy(float(val.loss_text))), "good", tag,
            "val_loss"))
        if val.bleu is not None:
            lines.append(line("BLEU: %.2f  |  ROUGE-L: %.4f" % (val.bleu, val.rouge), "good",
                              tag))
        return lines

    def checkpoint_lines(self, state, seg, ckpt):
        sc = self.sc
        tag = "CKPT"
        total = ckpt.model_bytes + ckpt.optim_bytes
        lines = [line("Saving checkpoint to %s/" % ckpt.path, "phase", tag),
                 line("Model state: %s (%s)  |  Optimizer state: %s (%s)" % (
                     fmt_bytes(ckpt.model_bytes), "fp32 adapters" if sc.adapters else "bf16",
                     fmt_bytes(ckpt.optim_bytes), "Adam m and v" if sc.adapters
                     else "fp32 master, Adam m and v"), "info", tag)]
        marks = sorted(set([max(1, ckpt.shards * k // 4) for k in (1, 2, 3, 4)]))
        for done in marks:
            lines.append(line("Writing shards %d/%d" % (done, ckpt.shards), "info", tag))
        if ckpt.asynchronous:
            saved = ("Checkpoint saved in %.2fs (async: %s staged to host memory on %s, upload "
                     "to storage continues in background)" % (
                         ckpt.seconds, fmt_bytes(total), plural(ckpt.writers, "node")))
        else:
            saved = "Checkpoint saved in %.2fs (%s at %.1f GB/s from %s)" % (
                ckpt.seconds, fmt_bytes(total), total / GB / ckpt.seconds,
                plural(ckpt.writers, "node"))
        return lines + [line(saved, "good", tag, "saved")]

    def export_lines(self, state):
        """The final model in SafeTensors, written from rank 0; a job too large for that (or
        a pretraining job) leaves its last checkpoint as the result."""
        sc = self.sc
        seconds = export_seconds(sc, sc.rank0_write_gbs)
        if not seconds:
            last = checkpoint_path(sc, sc.last_step, sc.epochs)
            return [line("Training finished at step %s; the model is in its last checkpoint, "
                         "%s/" % (fmt_int(sc.last_step), last), "good", "EXPORT")]
        files = export_files(sc)
        total = export_bytes(sc)
        final = "%s/final" % sc.checkpoint_dir(sc.epochs)
        lines = [line("Saving %s to SafeTensors from rank 0: %s in %s" % (
            "adapter weights (fp32)" if sc.adapters else "model weights (bf16)",
            fmt_bytes(total), plural(len(files), "file")), "phase", "EXPORT")]
        step = max(1, int(math.ceil(len(files) / 8.0)))
        shown = list(range(step - 1, len(files), step))
        if shown[-1] != len(files) - 1:
            shown.append(len(files) - 1)
        lines += [line("Writing %s [%d/%d]" % (files[index], index + 1, len(files)),
                       tag="EXPORT") for index in shown]
        if len(files) > 1:
            lines.append(line("Wrote model.safetensors.index.json (total_size %d)" % total,
                              tag="EXPORT"))
        rate = total / seconds
        return lines + [line("Exported to %s/ (%s in %.1fs, %s)" % (
            final, fmt_bytes(total), seconds,
            "%.2f GB/s" % (rate / GB) if rate >= GB else "%.1f MB/s" % (rate / 1e6)),
            "good", "EXPORT")]

    def summary_lines(self, state):
        return [line(text, "box") for text in summary_box(self.sc, state, self.glyphs)]


#: PCI bus ids of the GPUs in one node, as nvidia-smi and NCCL print them (fixed per GPU).
BUS_IDS = {"a100": ["07000", "0f000", "47000", "4e000", "87000", "90000", "b7000", "bd000"],
           "hopper": ["18000", "2a000", "3a000", "5d000", "9a000", "ab000", "ba000", "db000"],
           "amd": ["05000", "26000", "46000", "65000", "85000", "a6000", "c6000", "e5000"]}


def bus_id(sc, local):
    if sc.gpu.vendor == "amd":
        return BUS_IDS["amd"][local % 8]
    return BUS_IDS["a100" if sc.gpu.key.startswith("a100") else "hopper"][local % 8]


def tqdm_interval(seconds):
    """Elapsed/remaining as tqdm prints them: MM:SS, or H:MM:SS past an hour."""
    minutes, secs = divmod(int(max(0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return "%d:%02d:%02d" % (hours, minutes, secs)
    return "%02d:%02d" % (minutes, secs)


def tqdm_bar(fraction, glyphs, width=10):
    """tqdm's bar: full blocks, one partial block, spaces (digits and # in ASCII)."""
    charset = glyphs["tqdm"]
    symbols = len(charset) - 1
    full, part = divmod(int(max(0.0, min(1.0, fraction)) * width * symbols), symbols)
    text = charset[-1] * full
    if full < width:
        text += charset[part] + charset[0] * (width - full - 1)
    return text


def tqdm_meter(n, total, elapsed, rate, glyphs, prefix="", inverse=True, postfix=""):
    """`prefix pct%|bar| n/total [elapsed<remaining, rate]` as tqdm.format_meter draws it."""
    if inverse and rate < 1.0:
        rate_text = "%5.2fs/it" % (1.0 / rate)
    else:
        rate_text = "%5.2fit/s" % rate
    remaining = (total - n) / rate if rate else 0.0
    return "%s%3.0f%%|%s| %d/%d [%s<%s, %s%s]" % (
        prefix, 100.0 * n / total, tqdm_bar(n / float(total), glyphs), n, total,
        tqdm_interval(elapsed), tqdm_interval(remaining), rate_text, postfix)


def fp32(value):
    """A float as it comes out of an fp32 tensor's .item()."""
    return struct.unpack("f", struct.pack("f", value))[0]


#: The line of torch/distributed/run.py that warns about OMP_NUM_THREADS, by torch release
#: (in v2.5.1's and v2.7.1's source; users' torch 2.7 logs print run.py:766).
TORCHRUN_WARNING_LINES = {"2.5.1": 793, "2.7.1": 766}


class FrameworkVoice(Voice):
    """What every framework run shares: nvidia-smi, torchrun's launcher, NCCL's init; where
    a framework has nothing of its own to say, the classic text through its logger."""

    name = "framework"
    #: The file and line frameworks log rare events from (the user's training script).
    script = "train.py"

    def __init__(self, sc, glyphs):
        Voice.__init__(self, sc, glyphs)
        self.classic = ClassicVoice(sc, glyphs)

    def log(self, text, kind="info"):
        """A line in this framework's own log format."""
        return line(text, kind)

    def relog(self, lines):
        """Classic lines re-told through this framework's logger, their marks kept."""
        return [self.log(item.text, item.kind)._replace(mark=item.mark, joined=item.joined)
                for item in lines]

    # --- the start every torchrun job shares ----------------------------------------
    def smi_lines(self):
        """nvidia-smi of the first node, run by the job script before torchrun."""
        sc = self.sc
        if sc.gpu.vendor != "nvidia":
            return []
        stack = software_stack(sc)
        rule = "+" + "-" * 89 + "+"
        cells = "|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
        lines = [slot("smi") + " " * 7, rule,
                 "| NVIDIA-SMI %-23sDriver Version: %-15sCUDA Version: %-9s|" % (
                     stack["driver"], stack["driver"], stack["cuda"]),
                 cells,
                 "| GPU  Name                 Persistence-M | Bus-Id          Disp.A "
                 "| Volatile Uncorr. ECC |",
                 "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage "
                 "| GPU-Util  Compute M. |",
                 "|" + " " * 41 + "|" + " " * 24 + "|" + "               MIG M. |",
                 "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|"]
        for local in range(sc.per_node):
            offset = ((local * 2654435761) % 1000) / 1000.0 - 0.5
            lines += [
                "| %3d  %-31sOn  |   00000000:%s:%s.0 Off | %20d |" % (
                    local, sc.gpu.name, bus_id(sc, local)[:2].upper(),
                    bus_id(sc, local)[2:4].upper(), 0),
                "| N/A  %3dC    P0 %14dW / %4dW |%8dMiB / %6dMiB | %6d%%      Default |" % (
                    31 + int(4 * offset), sc.gpu.idle_watts + int(10 * offset),
                    sc.gpu.power_cap, 0, sc.gpu.smi_mib, 0),
                "|" + " " * 41 + "|" + " " * 24 + "|" + "             Disabled |"]
            lines.append("+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+")
        lines += ["", rule,
                  "| Processes:" + " " * 78 + "|",
                  "|  GPU   GI   CI              PID   Type   Process name"
                  "                        GPU Memory |",
                  "|        ID   ID                                           "
                  "                    Usage      |",
                  "|" + "=" * 89 + "|",
                  "|  No running processes found" + " " * 61 + "|",
                  rule]
        return [line(text) for text in lines]

    def torchrun_lines(self):
        """torchrun's OMP_NUM_THREADS warning, glog-prefixed from its line in the run's torch."""
        if self.sc.per_node < 2:
            return []
        release = software_stack(self.sc)["torch"].split("+")[0]
        prefix = "W%s %d site-packages/torch/distributed/run.py:%d] " % (
            slot("glog"), self.sc.identity.launcher_pid, TORCHRUN_WARNING_LINES[release])
        stars = "*" * 41
        return [line(prefix + text, "warn") for text in [
            "", stars, "Setting OMP_NUM_THREADS environment variable for each process to be 1 "
            "in default, to avoid your system being overloaded, please further tune the "
            "variable for optimal performance in your application as needed.", stars]]

    def nccl_info(self, text, tid=None, device=0, worker=None):
        """An NCCL INFO line of a worker on the first node (by default local rank 0's main
        thread; init runs on a thread of its own)."""
        worker = self.sc.identity.worker_pid if worker is None else worker
        return line("%s:%d:%d [%d] NCCL INFO %s" % (
            self.sc.hosts[0], worker, worker if tid is None else tid, device, text))

    def nccl_lines(self):
        """NCCL_DEBUG=INFO from rank 0 (local device 0) of the first node, and the other
        local ranks finishing; a real log holds one such block per rank and communicator."""
        if self.sc.gpus == 1:
            return []
        return self.nccl_bootstrap_lines() + self.nccl_topology_lines()

    def nccl_bootstrap_lines(self):
        """Version, driver, bootstrap and network selection, and the communicator starting."""
        sc = self.sc
        stack = software_stack(sc)
        address = master_address(sc)[1]
        amd = sc.gpu.vendor == "amd"
        info = self.nccl_info
        tid = sc.identity.init_tid
        lines = [info("NCCL version %s+%s%s" % (stack["nccl"], "hip" if amd else "cuda",
                                                stack["cuda"]))]
        if not amd:
            major, minor = stack["cuda"].split(".")
            lines.append(info("cudaDriverVersion %d" % (int(major) * 1000 + int(minor) * 10)))
        lines.append(info("Bootstrap : Using eth0:%s<0>" % address))
        # Eight-GPU servers carry one InfiniBand HCA per GPU; smaller boxes only Ethernet.
        if sc.per_node == 8:
            hcas = " ".join("[%d]mlx5_%d:1/IB" % (i, i) for i in range(sc.per_node))
            network = ["NET/IB : Using %s [RO]; OOB eth0:%s<0>" % (hcas, address),
                       "Using non-device net plugin version 0", "Using network IB"]
        else:
            network = ["NET/IB : No device found.", "NET/Socket : Using [0]eth0:%s<0>" % address,
                       "Using non-device net plugin version 0", "Using network Socket"]
        comm = "0x%x" % sc.identity.comm
        return lines + [info(text, tid) for text in network + [
            "ncclCommInitRank comm %s rank 0 nranks %d cudaDev 0 nvmlDev 0 busId %s commId "
            "0x%016x - Init START" % (comm, sc.gpus, bus_id(sc, 0), sc.identity.comm_id),
            "Setting affinity for GPU 0 to ffffffff,00000000,ffffffff",
            "comm %s rank 0 nRanks %d nNodes %d localRanks %d localRank 0 MNNVL 0" % (
                comm, sc.gpus, sc.nodes, sc.per_node)]]

    def nccl_topology_lines(self):
        """Rings and trees, connections, and every local rank's Init COMPLETE."""
        sc = self.sc
        ranks = sc.gpus
        channels = 32 if sc.nodes > 1 else 16
        tid = sc.identity.init_tid
        texts = []
        if ranks <= 16:
            ring = []
            for node in range(sc.nodes):
                first = node * sc.per_node
                ring += [first] + list(range(first + sc.per_node - 1, first, -1))
            texts += ["Channel %02d/%02d : %s" % (channel, channels,
                                                 "".join("%4d" % r for r in ring))
                      for channel in range(channels)]
        child = "1" if sc.per_node > 1 else "-1"
        peer = sc.per_node if sc.nodes > 1 else -1
        texts.append("Trees" + "".join(
            " [%d] %s/%d/-1->0->-1" % (channel, child, peer) if channel % 2 == 0 else
            " [%d] %s/-1/-1->0->%d" % (channel, child, peer) for channel in range(channels)))
        texts.append("P2P Chunksize set to %d" % (131072 if sc.nodes > 1 else 524288))
        via = "P2P/IPC" if sc.gpu.vendor == "amd" else "P2P/CUMEM/read"
        if sc.per_node > 1:
            texts += ["Channel %02d/0 : 0[0] -> 1[1] via %s" % (channel, via)
                      for channel in (0, 1)]
        if sc.nodes > 1:
            texts += ["Channel 00/0 : %d[0] -> 0[0] [receive] via NET/IB/0/GDRDMA" % sc.per_node,
                      "Channel 00/0 : 0[0] -> %d[0] [send] via NET/IB/0/GDRDMA" % sc.per_node]
        texts += ["Connected all rings", "Connected all trees",
                  "threadThresholds 8/8/64 | %d/8/64 | 512 | 512" % (ranks * 8),
                  "%d coll channels, 0 collnet channels, 0 nvls channels, %d p2p channels, %d "
                  "p2p channels per peer" % (channels, channels, max(1, channels // 16))]
        lines = [self.nccl_info(text, tid) for text in texts]
        for local in range(min(sc.per_node, 4)):
            lines.append(self.nccl_info(
                "ncclCommInitRank comm 0x%x rank %d nranks %d cudaDev %d nvmlDev %d busId %s "
                "commId 0x%016x - Init COMPLETE" % (
                    sc.identity.rank_comms[local], local, ranks, local, local,
                    bus_id(sc, local), sc.identity.comm_id),
                sc.identity.rank_tids[local], local, sc.identity.rank_pids[local]))
        return lines

    def startup_lines(self):
        return self.smi_lines() + self.torchrun_lines() + self.nccl_lines()

    # --- what a framework without words of its own says -----------------------------
    def setup_lines(self):
        return self.relog(self.classic.setup_lines())

    def validation_lines(self, state, seg, val):
        return self.relog(self.classic.validation_lines(state, seg, val))

    def checkpoint_lines(self, state, seg, ckpt):
        return self.relog(self.classic.checkpoint_lines(state, seg, ckpt))

    def training_elapsed(self, state):
        """Seconds since the training loop began."""
        return state.clock - state.train_start


#: transformers class names by model family (what Trainer and Lightning summaries print).
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
              "mixtral": "MixtralForCausalLM", "qwen": "Qwen2ForCausalLM",
              "gemma": "Gemma2ForCausalLM", "falcon": "FalconForCausalLM",
              "neox": "GPTNeoXForCausalLM", "gpt2": "GPT2LMHeadModel",
              "custom": "LlamaForCausalLM"}


def hf_num_examples(sc):
    """Num examples for which Trainer's own arithmetic gives sc.steps_per_epoch updates:
    ceil(N / (per_device * world)) // grad_accum == steps_per_epoch."""
    per_step = sc.micro_batch * sc.dp
    batches = sc.steps_per_epoch * sc.grad_accum
    if (batches - 1) * per_step < sc.packed_samples <= batches * per_step:
        return sc.packed_samples
    return batches * per_step


def hf_logging_steps(sc):
    """logging_steps a user would pick so that a dict line comes every few seconds."""
    for steps in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500):
        if steps * sc.step_seconds >= 3.0:
            return steps
    return 1000


#: Where transformers logs what the Trainer prints, by release: the line that opens each
#: block in trainer.py (Trainer._inner_training_loop, _save, evaluation_loop, ...),
#: configuration_utils.py and generation/configuration_utils.py (save_pretrained) and
#: modeling_utils.py (save_pretrained's weights); the block's other lines keep their
#: distance from it in both releases (v4.46.3 and v4.53.2 source).
TRANSFORMERS_LINES = {
    "4.46.3": {"precision": 699, "training": 2314, "completed": 2591, "save": 3812,
               "evaluation": 4128, "config": 414, "generation_config": 865, "weights": 3035},
    "4.53.2": {"precision": 751, "training": 2402, "completed": 2677, "save": 4019,
               "evaluation": 4353, "config": 437, "generation_config": 891, "weights": 3949},
}


class HFVoice(FrameworkVoice):
    """The transformers Trainer with enable_explicit_format(); tqdm counts optimizer steps."""
    name = "hf"
    counting = "job"

    def __init__(self, sc, glyphs):
        FrameworkVoice.__init__(self, sc, glyphs)
        self.logging_steps = hf_logging_steps(sc)
        #: Losses of the steps since the last logged dict (Trainer's tr_loss).
        self.window = []
        #: The raw losses of every step this session, summed (for train_loss), and how many.
        self.loss_sum = 0.0
        self.loss_steps = 0
        #: The progress bar's rate, smoothed as tqdm smooths it, and when it last moved.
        self.rate = TqdmRate()
        self.bar_moved = None
        #: The lines its logger calls sit on, in the run's transformers.
        self.at = TRANSFORMERS_LINES[software_stack(sc)["transformers"]]

    def hf(self, lineno, text, filename="trainer.py", kind="info", mark=None):
        return line("[%s|%s:%s] %s >> %s" % (log_level(kind), filename, lineno,
                                             slot("logging"), text), kind, "", mark)

    def log(self, text, kind="info"):
        return self.hf(212, text, self.script, kind)

    def setup_lines(self):
        sc = self.sc
        shards = safetensors_shards(2 * sc.model.params)  # the base model as downloaded
        trainable = trainable_params(sc)
        lines = []
        if shards > 1:
            lines.append(line("Loading checkpoint shards: %s" % tqdm_meter(
                shards, shards, shards / 2.0, 2.0, self.glyphs)))
        lines.append(self.hf(self.at["precision"], "Using auto half precision backend"))
        at = self.at["training"]
        # _inner_training_loop logs its summary in one go: one timestamp for the block.
        lines += block([
            self.hf(at, "***** Running training *****"),
            self.hf(at + 1, "  Num examples = %s" % fmt_int(hf_num_examples(sc))),
            self.hf(at + 2, "  Num Epochs = %s" % fmt_int(sc.epochs)),
            self.hf(at + 3, "  Instantaneous batch size per device = %s" % fmt_int(
                sc.micro_batch)),
            self.hf(at + 6, "  Total train batch size (w. parallel, distributed & accumulation) "
                            "= %s" % fmt_int(sc.global_batch)),
            self.hf(at + 7, "  Gradient Accumulation steps = %d" % sc.grad_accum),
            self.hf(at + 8, "  Total optimization steps = %s" % fmt_int(sc.total_steps)),
            self.hf(at + 9, "  Number of trainable parameters = %s" % fmt_int(trainable)),
        ])
        if sc.resumed:
            done = sc.first_step - 1
            epochs_done = done // sc.steps_per_epoch
            lines[-1:] = block(lines[-1:] + [
                self.hf(at + 31, "  Continuing training from checkpoint, will skip to saved "
                                 "global_step"),
                self.hf(at + 32, "  Continuing training from epoch %d" % epochs_done),
                self.hf(at + 33, "  Continuing training from global step %d" % done),
                self.hf(at + 35, "  Will skip the first %d epochs then the first %d batches in "
                                 "the first epoch." % (epochs_done, (done % sc.steps_per_epoch)
                                                       * sc.grad_accum)),
            ])
        return lines

    def bar_line(self, state, kind="progress"):
        sc = self.sc
        return line(tqdm_meter(state.step, sc.total_steps, self.training_elapsed(state),
                               self.rate.value(), self.glyphs), kind, "")

    def update_lines(self, state, obs):
        sc = self.sc
        done = obs.done
        since = state.clock - (state.train_start if self.bar_moved is None else self.bar_moved)
        self.rate.update(done, since)
        self.bar_moved = state.clock
        if not math.isnan(obs.loss):
            # logging_nan_inf_filter: a step whose loss is not finite leaves the sums alone.
            self.window += [state.loss] * done
            self.loss_sum += obs.loss * done
            self.loss_steps += done
        # The bar moves first; the dict is then written above it (tqdm.write).
        lines = [self.bar_line(state)]
        logs = state.step // self.logging_steps > (state.step - done) // self.logging_steps
        if logs and self.window:
            record = collections.OrderedDict([
                ("loss", round(math.fsum(self.window) / len(self.window), 4)),
                ("grad_norm", fp32(state.grad_norm)),
                ("learning_rate", state.lr),
                ("epoch", round(state.step / float(sc.steps_per_epoch), 2))])
            self.window = []
            lines.append(line(hf_dict(record)))
        return lines

    def validation_lines(self, state, seg, val):
        sc = self.sc
        batches = val.batches
        at = self.at["evaluation"]
        lines = block([self.hf(at, ""), line("***** Running Evaluation *****"),
                       self.hf(at + 2, "  Num examples = %d" % val.samples),
                       self.hf(at + 5, "  Batch size = %d" % sc.micro_batch)])
        for quarter in (1, 2, 3):
            done = batches * quarter // 4
            lines.append(line(tqdm_meter(done, batches, val.runtime * quarter / 4,
                                         batches / val.runtime, self.glyphs), "progress", ""))
        record = collections.OrderedDict([
            ("eval_loss", fp32(val.loss)),
            ("eval_runtime", round(val.runtime, 4)),
            ("eval_samples_per_second", round(val.samples / val.runtime, 3)),
            ("eval_steps_per_second", round(batches / val.runtime, 3)),
            ("epoch", round(seg.last_step / float(sc.steps_per_epoch), 2))])
        lines.append(line(hf_dict(record), mark="val_loss"))
        # The eval bar goes away when done (leave=False) and the training bar is back.
        return lines + [self.bar_line(state)]

    def save_lines(self, path, weights):
        """save_pretrained: config, then one weights file or a sharded index."""
        sc = self.sc
        lines = []
        if sc.adapters:
            return lines
        files = export_files(sc)
        at = self.at
        lines.append(self.hf(at["config"], "Configuration saved in %s/config.json" % path,
                             "configuration_utils.py"))
        lines.append(self.hf(at["generation_config"], "Configuration saved in "
                             "%s/generation_config.json" % path, "configuration_utils.py"))
        if len(files) == 1:
            lines.append(self.hf(at["weights"], "Model weights saved in %s/%s" % (
                path, files[0]), "modeling_utils.py"))
        else:
            lines.append(self.hf(at["weights"] + 8, "The model is bigger than the maximum size "
                                 "per checkpoint (5GB) and is going to be split in %d "
                                 "checkpoint shards. You can find where each parameters has "
                                 "been saved in the index located at %s/%s." % (
                                     len(files), path, weights), "modeling_utils.py"))
        return lines

    def checkpoint_lines(self, state, seg, ckpt):
        sc = self.sc
        path = "%s/checkpoint-%d" % (sc.checkpoint_dir(seg.epoch), seg.last_step)
        lines = [self.hf(self.at["save"], "Saving model checkpoint to %s" % path)]
        lines += self.save_lines(path, "model.safetensors.index.json")
        return lines[:-1] + [lines[-1]._replace(mark="saved")]

    def export_lines(self, state):
        """The end of train(), then run_clm's save_model() (rank 0 writes the model) and
        its log_metrics("train") block."""
        sc = self.sc
        runtime = self.training_elapsed(state)
        samples = (hf_num_examples(sc) * sc.epochs if not sc.resumed
                   else sc.session_steps * sc.global_batch)
        metrics = collections.OrderedDict([
            ("train_runtime", round(runtime, 4)),
            ("train_samples_per_second", round(samples / runtime, 3)),
            ("train_steps_per_second", round(sc.session_steps / runtime, 3)),
            ("train_loss", self.loss_sum / max(1, self.loss_steps)),
            ("epoch", round(sc.last_step / float(sc.steps_per_epoch), 2))])
        final = "%s/final" % sc.checkpoint_dir(sc.epochs)
        lines = [self.hf(self.at["completed"], ""), line(""),
                 line("Training completed. Do not forget to share your model on "
                      "huggingface.co/models =)"), line(""),
                 line(hf_dict(metrics)),
                 self.hf(self.at["save"], "Saving model checkpoint to %s" % final)]
        lines += self.save_lines(final, "model.safetensors.index.json")
        metrics["total_flos"] = 6.0 * sc.model.params * sc.last_step * sc.tokens_per_step
        metrics["train_samples"] = samples
        return lines + block([line(text) for text in hf_metrics_block("train", metrics)])


def hf_metrics_block(split, metrics):
    """Trainer.log_metrics: `***** train metrics *****`, then sorted, aligned key = value
    lines in metrics_format's units (runtime as H:MM:SS.cc, FLOPs in GF)."""
    shown = collections.OrderedDict()
    for key, value in metrics.items():
        if key.endswith("_runtime"):
            seconds = int(value)
            value = "%d:%02d:%02d.%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60,
                                           int((value - seconds) * 100))
        elif key == "total_flos":
            value = "%dGF" % (int(value) >> 30)
        elif isinstance(value, float):
            value = round(value, 4)
        shown[key] = str(value)
    key_width = max(len(key) for key in shown)
    value_width = max(len(value) for value in shown.values())
    return ["***** %s metrics *****" % split] + [
        "  %s = %s" % (key.ljust(key_width), shown[key].rjust(value_width))
        for key in sorted(shown)]


class TqdmRate:
    """The rate tqdm shows: exponential moving averages (smoothing 0.3) of the steps and
    of the seconds between two updates, each bias-corrected, their ratio (tqdm.std.EMA)."""

    def __init__(self, smoothing=0.3):
        self.alpha = smoothing
        self.steps = self.seconds = 0.0

    def update(self, steps, seconds):
        self.steps = self.alpha * steps + (1 - self.alpha) * self.steps
        self.seconds = self.alpha * seconds + (1 - self.alpha) * self.seconds

    def value(self):
        """Steps per second (the bias corrections of the two averages cancel)."""
        return self.steps / self.seconds if self.seconds else 0.0


def hf_dict(record):
    """str() of the metrics dict, as ProgressCallback writes it."""
    return "{%s}" % ", ".join("%r: %r" % item for item in record.items())


def human_count(number):
    """Lightning's get_human_readable_count: `124 M`, `8.0 B`, `0  `."""
    labels = [" ", "K", "M", "B", "T"]
    digits = int(math.floor(math.log10(number))) + 1 if number > 0 else 1
    groups = min(int(math.ceil(digits / 3.0)), len(labels))
    value = number * 10.0 ** (-3 * (groups - 1))
    if groups - 1 < 1 or value >= 100:
        return "{:,d} {}".format(int(value), labels[groups - 1])
    return "{:,.1f} {}".format(value, labels[groups - 1])


def tqdm_number(value):
    """tqdm's format_num for postfix values: `.3g` with short exponents, if that is shorter."""
    short = "{:.3g}".format(value).replace("+0", "+").replace("-0", "-")
    plain = str(value)
    return short if len(short) < len(plain) else plain


class LightningVoice(FrameworkVoice):
    """PyTorch Lightning 2.4 and 2.5 (alike in these lines): rank-zero info lines, the model
    summary, one bar per epoch."""
    name = "lightning"
    counting = "batch"

    def __init__(self, sc, glyphs):
        FrameworkVoice.__init__(self, sc, glyphs)
        # The logger's version: one per launch of the job.
        self.v_num = sc.identity.launches if sc.resumed else 0
        #: When this process's epoch bar was created (tqdm times it from then).
        self.bar_started = None
        #: ModelCheckpoint's view: the last val_loss, the best, how many it saved.
        self.val_loss = None
        self.best = None
        self.saved = 0

    def startup_lines(self):
        sc = self.sc
        precision = "bfloat16" if sc.precision == "bf16" else "16bit"
        rule = "-" * 100
        lines = [line(text) for text in [
            "Using %s Automatic Mixed Precision (AMP)" % precision,
            "GPU available: True (cuda), used: True",
            "TPU available: False, using: 0 TPU cores",
            "HPU available: False, using: 0 HPUs"] + [
            # Each process of this node logs its own (lightning_fabric's _init_dist_connection).
            "Initializing distributed: GLOBAL_RANK: %d, MEMBER: %d/%d" % (rank, rank + 1, sc.gpus)
            for rank in range(sc.per_node)] + [
            rule, "distributed_backend=nccl",
            "All distributed processes registered. Starting with %d processes" % sc.gpus,
            rule, ""]]
        devices = ",".join(str(i) for i in range(sc.per_node))
        return self.smi_lines() + self.torchrun_lines() + lines + self.nccl_lines() + [
            line("You are using a CUDA device (%r) that has Tensor Cores. To properly utilize "
                 "them, you should set `torch.set_float32_matmul_precision('medium' | 'high')` "
                 "which will trade-off precision for performance. For more details, read "
                 "https://pytorch.org/docs/stable/generated/torch.set_float32_matmul_precision"
                 ".html#torch.set_float32_matmul_precision" % sc.gpu.name),
            line("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [%s]" % devices)]

    def setup_lines(self):
        sc = self.sc
        lines = []
        if sc.resumed:
            path = self.ckpt_path(sc.first_step - 1)
            lines.append(line("Restoring states from the checkpoint path at %s" % path,
                              "info", ""))
            lines.append(line("Restored all states from the checkpoint at %s" % path,
                              "info", ""))
        if sc.adapters:
            trainable = trainable_params(sc)
            total = sc.model.params + trainable
            kind = "PeftModelForCausalLM"
        else:
            trainable = total = sc.model.params
            kind = HF_CLASSES[sc.model.family]
        modules = 14 * sc.model.layers + 8
        columns = [(" ", "0"), ("Name", "model"), ("Type", kind),
                   ("Params", human_count(total)), ("Mode", "train")]
        widths = [max(len(head), len(cell)) for head, cell in columns]
        rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
        lines += [line(text) for text in [
            "",
            " | ".join(head.ljust(w) for (head, _), w in zip(columns, widths)),
            rule,
            " | ".join(cell.ljust(w) for (_, cell), w in zip(columns, widths)),
            rule,
            human_count(trainable).ljust(10) + "Trainable params",
            human_count(total - trainable).ljust(10) + "Non-trainable params",
            human_count(total).ljust(10) + "Total params",
            "{:,.3f}".format(total * 4 / 1e6).ljust(10) +
            "Total estimated model params size (MB)",
            str(modules).ljust(10) + "Modules in train mode",
            "0".ljust(10) + "Modules in eval mode"]]
        return lines

    def ckpt_path(self, step):
        sc = self.sc
        epoch = sc.epoch_of(step)
        return "%s/epoch=%d-step=%d.ckpt" % (sc.checkpoint_dir(epoch), epoch - 1, step)

    def bar_line(self, state, kind="progress"):
        sc = self.sc
        _, done, batches = state.counted
        rate = state.tokens_per_s / float(sc.tokens_per_step) * sc.grad_accum
        # tqdm times the bar from its creation in this process, not from the epoch's start.
        elapsed = state.clock - self.bar_started if self.bar_started is not None else 0.0
        postfix = ", v_num=%d" % self.v_num
        if state.loss is not None:
            postfix += ", train_loss=%s" % tqdm_number(float(state.loss_text))
        if self.val_loss is not None:
            postfix += ", val_loss=%s" % tqdm_number(self.val_loss)
        return line(tqdm_meter(done, batches, elapsed, rate, self.glyphs,
                               "Epoch %d: " % (state.epoch - 1), False, postfix), kind, "")

    def epoch_lines(self, state, first_step):
        """A new epoch bar (or, after a resume, the restored epoch's) starts timing now."""
        self.bar_started = state.clock
        return []

    def micro_lines(self, state):
        """The bar counts batches, so it moves in place between optimizer steps."""
        return [self.bar_line(state, "live")] if state.tokens_per_s else []

    def update_lines(self, state, obs):
        sc = self.sc
        ends_epoch = state.step % sc.steps_per_epoch == 0
        return [self.bar_line(state, "info" if ends_epoch else "progress")]

    def validation_lines(self, state, seg, val):
        lines = []
        batches = val.batches
        for quarter in (1, 2, 3, 4):
            done = batches * quarter // 4
            lines.append(line(tqdm_meter(done, batches, val.runtime * quarter / 4,
                                         batches / val.runtime, self.glyphs,
                                         "Validation DataLoader 0: ", False), "progress", ""))
        self.val_loss = val.loss
        return lines[:-1] + [lines[-1]._replace(mark="val_loss")]

    def checkpoint_lines(self, state, seg, ckpt):
        """ModelCheckpoint(save_top_k=-1): every validation saves, ranked among those kept."""
        value = self.val_loss
        self.best = value if self.best is None else min(self.best, value)
        self.saved += 1
        text = ("Epoch %d, global step %d: 'val_loss' reached %0.5f (best %0.5f), saving model "
                "to '%s' as top %d" % (seg.epoch - 1, seg.last_step, value, self.best,
                                       self.ckpt_path(seg.last_step), self.saved))
        return [line(text, mark="saved")]

    def export_lines(self, state):
        sc = self.sc
        if sc.loss_curve == "sft" and not sc.resumed:
            limit = "max_epochs=%d" % sc.epochs
        else:
            limit = "max_steps=%d" % sc.total_steps
        # ModelCheckpoint(save_last=True) writes last.ckpt silently before fit() returns.
        return [line("`Trainer.fit` stopped: `%s` reached." % limit)]


def zero_stage(sc):
    """The ZeRO stage that matches the scenario's sharding."""
    if sc.strategy.startswith(("FSDP", "DeepSpeed ZeRO-3")):
        return 3
    if sc.strategy.startswith("DeepSpeed ZeRO-2"):
        return 2
    return 1


#: Where DeepSpeed's logger calls sit, by release: `file:line:function` as its log format
#: prints them (v0.16.5 and v0.17.5 source); a call's neighbours keep their distance from
#: it in both (DeepSpeedConfig.print's per-key line 4 below its title, print_user_config 10
#: above; the hysteresis message 7 below the overflow's). 0.17 saves through log_dist
#: alone: its TorchCheckpointEngine announces itself at start-up and logs no file.
DEEPSPEED_SOURCE = {
    "0.16.5": {"accelerator": "real_accelerator.py:239:get_accelerator",
               "cdb": "comm.py:658:init_distributed", "backend": "comm.py:689:init_distributed",
               "buckets": "stage3.py:170:__init__", "config": "config.py:1000:print",
               "overflow": "loss_scaler.py:183:update_scale",
               "saving": "torch_checkpoint_engine.py:21:save",
               "zero_saved": "engine.py:3672:_save_zero_checkpoint",
               "commit": "torch_checkpoint_engine.py:33:commit"},
    "0.17.5": {"accelerator": "real_accelerator.py:260:get_accelerator",
               "cdb": "comm.py:821:init_distributed", "backend": "comm.py:852:init_distributed",
               "buckets": "stage3.py:186:__init__", "config": "config.py:954:print",
               "overflow": "loss_scaler.py:184:update_scale"},
}


def deepspeed_json(value, level=0):
    """The user's config as DeepSpeedConfig.print_user_config dumps it through its
    ScientificNotationEncoder (deepspeed/runtime/config_utils.py): keys in the file's order,
    numbers above 1e3 in %e notation, and each entry ending in `, ` before its newline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "%e" % value if value > 1e3 else str(value)
    if isinstance(value, dict):
        prefix = " " * 4 * (level + 1)
        return "{" + ", ".join('\n%s"%s": %s' % (prefix, key, deepspeed_json(item, level + 1))
                               for key, item in value.items()) + "\n" + " " * 4 * level + "}"
    if isinstance(value, list):
        return "[%s]" % ", ".join(deepspeed_json(item) for item in value)
    return json.dumps(value)


class DeepSpeedVoice(FrameworkVoice):
    """DeepSpeed: `[time] [INFO] [file:line:func]`, log_dist at logging.py:107."""
    name = "deepspeed"
    counting = "job"

    loss_scaling = DEEPSPEED_LOSS_SCALING

    def __init__(self, sc, glyphs):
        FrameworkVoice.__init__(self, sc, glyphs)
        #: Samples/s of every step so far, for the timer's running average.
        self.rates = []
        self.version = software_stack(sc)["deepspeed"]
        self.at = DEEPSPEED_SOURCE[self.version]

    def where(self, name, offset=0, function=None):
        """`file:line:function` of a logger call, `offset` lines below a known one (in
        `function` where that is another)."""
        filename, lineno, known = self.at[name].split(":")
        return "%s:%d:%s" % (filename, int(lineno) + offset, function or known)

    def ds(self, where, text, kind="info", mark=None):
        return line("[%s] [%s] [%s] %s" % (slot("logging"), log_level(kind), where, text), kind,
                    "", mark)

    def dist(self, text, kind="info"):
        return self.ds("logging.py:107:log_dist", "[Rank 0] " + text, kind)

    def log(self, text, kind="info"):
        return self.ds("%s:212:main" % self.script, text, kind)

    def scheduler(self):
        """DeepSpeed's scheduler for the run's schedule, its warmup linear as announced (the
        default warmup_type is "log"), decaying to the run's floor; (None, None) where
        DeepSpeed has none (warmup-stable-decay) and the script passes its own."""
        sc = self.sc
        if sc.schedule == "wsd":
            return None, None
        if sc.schedule == "cosine":
            return "WarmupCosineLR", {"total_num_steps": sc.total_steps,
                                      "warmup_num_steps": sc.warmup_steps,
                                      "warmup_type": "linear", "warmup_min_ratio": 0.0,
                                      "cos_min_ratio": sc.min_lr / sc.peak_lr}
        return "WarmupDecayLR", {"total_num_steps": sc.total_steps,
                                 "warmup_num_steps": sc.warmup_steps, "warmup_type": "linear",
                                 "warmup_min_lr": 0.0, "warmup_max_lr": sc.peak_lr}

    def config(self):
        sc = self.sc
        # In the order a ds_config.json is written: batch, optimizer, schedule, precision.
        config = collections.OrderedDict([
            ("train_batch_size", sc.global_batch),
            ("train_micro_batch_size_per_gpu", sc.micro_batch),
            ("gradient_accumulation_steps", sc.grad_accum),
            ("steps_per_print", sc.log_every),
            ("optimizer", collections.OrderedDict([
                ("type", "AdamW"),
                ("params", collections.OrderedDict([("lr", sc.peak_lr), ("betas", [0.9, 0.95]),
                                                    ("weight_decay", 0.1)]))]))])
        name, params = self.scheduler()
        if name:
            config["scheduler"] = collections.OrderedDict([("type", name), ("params", params)])
        config["gradient_clipping"] = 1.0
        if sc.precision == "bf16":
            config["bf16"] = {"enabled": True}
        else:
            config["fp16"] = collections.OrderedDict([
                ("enabled", True), ("initial_scale_power", 16), ("hysteresis", 2),
                ("loss_scale_window", 1000)])
        config["zero_optimization"] = collections.OrderedDict([("stage", zero_stage(sc)),
                                                               ("overlap_comm", True)])
        config["wall_clock_breakdown"] = False
        return config

    def startup_lines(self):
        return self.smi_lines() + self.torchrun_lines() + [
            self.ds(self.where("accelerator"), "Setting ds_accelerator to cuda (auto detect)"),
            self.ds(self.where("cdb"), "cdb=None"),
            self.ds(self.where("backend"),
                    "Initializing TorchBackend in DeepSpeed with backend nccl")
        ] + self.nccl_lines()

    def setup_lines(self):
        return self.optimizer_lines() + self.config_lines()

    def optimizer_lines(self):
        """The engine's start: ZeRO's optimizer (with its memory report at stage 3) and the
        LR scheduler."""
        sc = self.sc
        stage = zero_stage(sc)
        dtype = "torch.bfloat16" if sc.precision == "bf16" else "torch.float16"
        reserved = sc.memory_gib - optimizer_gib(sc) - RUNTIME_OVERHEAD_GIB
        lines = [self.dist("DeepSpeed info: version=%s, git-hash=unknown, git-branch=unknown"
                           % self.version),
                 self.dist("DeepSpeed Flops Profiler Enabled: False"),
                 self.dist("DeepSpeed Basic Optimizer = AdamW"),
                 self.dist("Creating %s ZeRO stage %d optimizer" % (dtype, stage))]
        if stage == 3:
            lines += [
                self.ds(self.where("buckets"), "Reduce bucket size 500000000"),
                self.ds(self.where("buckets", 1), "Prefetch bucket size 50000000"),
                self.ds("utils.py:781:see_memory_usage", "Stage 3 initialize beginning"),
                self.ds("utils.py:782:see_memory_usage",
                        "MA %.2f GB         Max_MA %.2f GB         CA %.2f GB         Max_CA "
                        "%d GB " % (reserved * 0.9, reserved * 0.9, reserved,
                                    int(round(reserved)))),
                self.ds("utils.py:789:see_memory_usage",
                        "CPU Virtual Memory:  used = %.2f GB, percent = %.1f%%" % (
                            112.37 + sc.model.params * 2 / GB / sc.per_node,
                            5.6 + sc.model.params / 1e11))]
        lines += [
            self.dist("DeepSpeed Final Optimizer = %s" % (
                "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer")),
            self.scheduler_line(),
            self.dist("DeepSpeed LR Scheduler = <%s object at 0x7f%010x>" % (
                "deepspeed.runtime.lr_schedules.%s" % self.scheduler()[0] if self.scheduler()[0]
                else "torch.optim.lr_scheduler.LambdaLR", sc.identity.comm % 0xffffffff0 + 0x10))]
        if "commit" not in self.at:  # 0.17's checkpoint engine, created after the scheduler
            lines.append(self.dist("[TorchCheckpointEngine] Initialized with serialization = "
                                   "True"))
        return lines

    def scheduler_line(self):
        name = self.scheduler()[0]
        if name:
            return self.dist("DeepSpeed using configured LR scheduler = %s" % name)
        return self.dist("DeepSpeed using client LR scheduler")

    def config_lines(self):
        """DeepSpeedEngine's configuration dump (sorted, dot-padded) and the user's JSON."""
        sc = self.sc
        stage = zero_stage(sc)
        lines = [self.ds(self.where("config"), "DeepSpeedEngine configuration:")]
        dump = {"activation_checkpointing_config": '{"partition_activations": false, '
                                                   '"contiguous_memory_optimization": false}',
                "amp_enabled": False, "dump_state": False,
                "global_rank": 0, "gradient_accumulation_steps": sc.grad_accum,
                "gradient_clipping": 1.0, "optimizer_name": "adamw",
                "scheduler_name": self.scheduler()[0], "steps_per_print": sc.log_every,
                "train_batch_size": sc.global_batch,
                "train_micro_batch_size_per_gpu": sc.micro_batch,
                "wall_clock_breakdown": False, "world_size": sc.dp, "zero_enabled": True,
                "zero_optimization_stage": stage}
        if "commit" in self.at:  # 0.16 keeps precision as flags
            dump.update({"bfloat16_enabled": sc.precision == "bf16",
                         "fp16_enabled": sc.precision == "fp16",
                         "initial_dynamic_scale": 65536 if sc.precision == "fp16" else 1})
        else:  # 0.17 as its precision configs' pydantic models (runtime/precision_config.py)
            dump.update({"bfloat16_config": "enabled=%s immediate_grad_update=False "
                                            "check_grad_overflow=False" % (
                                                sc.precision == "bf16"),
                         "float16_config": "enabled=%s auto_cast=False loss_scale=0 "
                                           "initial_scale_power=16 loss_scale_window=1000 "
                                           "hysteresis=2 consecutive_hysteresis=False "
                                           "min_loss_scale=1 fp16_master_weights_and_grads="
                                           "False" % (sc.precision == "fp16")})
        for name in sorted(dump):
            lines.append(self.ds(self.where("config", 4), "  %s %s %s" % (
                name, "." * (29 - len(name)), dump[name])))
        body = deepspeed_json(self.config()).split("\n")
        lines.append(self.ds(self.where("config", -10, "print_user_config"),
                             "  json = " + body[0]))
        lines += [line(text) for text in body[1:]]
        lines = block(lines)  # DeepSpeedConfig.print logs it all in one go
        if sc.resumed:
            tag = "global_step%d" % (sc.first_step - 1)
            lines.append(self.dist("Loading model from %s/%s/mp_rank_00_model_states.pt" % (
                sc.checkpoint_dir(1), tag)))
        return lines

    def update_lines(self, state, obs):
        sc = self.sc
        # The loss scaler speaks inside step(), before the step is reported.
        lines = [self.overflow_line(change) for change in obs.scale_changes.values()]
        skipped = state.skipped + skipped_in(obs.events)
        lr = state.lr
        samples_per_s = state.tokens_per_s / sc.seq_len
        self.rates.append(samples_per_s)
        # Warm-up steps are left out of the running average, as DeepSpeed's timer does.
        counted = self.rates[2:]
        running = math.fsum(counted) / len(counted) if counted else float("-inf")
        allocated = state.mem_gib - RUNTIME_OVERHEAD_GIB
        return lines + [
            self.dist("step=%d, skipped=%d, lr=[%r, %r], mom=[[0.9, 0.95], [0.9, 0.95]]" % (
                state.step, skipped, lr, lr)),
            self.ds("timer.py:264:stop",
                    "epoch=%d/micro_step=%d/global_step=%d, RunningAvgSamplesPerSec=%r, "
                    "CurrSamplesPerSec=%r, MemAllocated=%.2fGB, MaxMemAllocated=%.2fGB" % (
                        state.epoch - 1, state.step * sc.grad_accum, state.step, running,
                        samples_per_s, allocated, allocated + 0.6 * RUNTIME_OVERHEAD_GIB)),
            # The engine never prints the loss: the training script logs it, through
            # DeepSpeed's log_dist, after each step the engine reports.
            self.dist("Loss: %.4f" % state.loss)]

    def export_lines(self, state):
        """The script returns; the deepspeed launcher reports each local process's exit."""
        sc = self.sc
        return block([self.ds("launch.py:351:main", "Process %d exits successfully." % (
            sc.identity.rank_pids[local])) for local in range(sc.per_node)])

    def overflow_line(self, change):
        """DynamicLossScaler: hysteresis 2 absorbs the first overflow, then the scale halves."""
        if change.scale == change.attempted:
            return self.ds(self.where("overflow", 7), "[deepspeed] OVERFLOW! Rank 0 Skipping "
                           "step. Attempted loss scale: %d, but hysteresis is %d. Reducing "
                           "hysteresis to %d" % (change.attempted, change.hysteresis + 1,
                                                 change.hysteresis))
        return self.ds(self.where("overflow"), "[deepspeed] OVERFLOW! Rank 0 Skipping step. "
                       "Attempted loss scale: %d, reducing to %d" % (change.attempted,
                                                                      change.scale))

    def checkpoint_lines(self, state, seg, ckpt):
        sc = self.sc
        tag = "global_step%d" % seg.last_step
        folder = "%s/%s" % (sc.checkpoint_dir(seg.epoch), tag)
        model = "%s/zero_pp_rank_0_mp_rank_00_model_states.pt" % folder
        optim = "%s/%szero_pp_rank_0_mp_rank_00_optim_states.pt" % (
            folder, "bf16_" if sc.precision == "bf16" else "")
        if "commit" not in self.at:  # 0.17: the engine's create() and the model's path only
            return [self.dist("[Torch] Checkpoint %s is begin to save!" % tag),
                    self.dist("Saving model checkpoint: %s" % model)._replace(mark="saved")]
        return [self.dist("[Torch] Checkpoint %s is about to be saved!" % tag),
                self.dist("Saving model checkpoint: %s" % model),
                self.ds(self.where("saving"), "[Torch] Saving %s..." % model),
                self.ds(self.where("saving", 2), "[Torch] Saved %s." % model),
                self.ds(self.where("saving"), "[Torch] Saving %s..." % optim),
                self.ds(self.where("saving", 2), "[Torch] Saved %s." % optim),
                self.ds(self.where("zero_saved"), "zero checkpoint saved %s" % optim),
                self.ds(self.where("commit"), "[Torch] Checkpoint %s is ready now!" % tag,
                        mark="saved")]


#: Megatron's tokenizer types by tokenizer family.
MEGATRON_TOKENIZERS = {"GPT-2 BPE": "GPT2BPETokenizer", "GPT-NeoX BPE": "GPT2BPETokenizer",
                       "Llama 2 SentencePiece": "Llama2Tokenizer",
                       "Llama 3 tiktoken": "TikTokenizer"}


def padded_vocab(vocab, tp):
    """Megatron pads the vocabulary to a multiple of 128 x TP."""
    multiple = 128 * tp
    return int(math.ceil(vocab / float(multiple))) * multiple


class MegatronVoice(FrameworkVoice):
    """Megatron-LM (2024 core_r0.9-era training.py): print_rank_0/print_rank_last lines."""
    name = "megatron"
    counting = "job"
    #: Megatron-LM trains whole models; adapters are NeMo's or PEFT's business.
    methods = ("full", "pretrain")

    loss_scaling = MEGATRON_LOSS_SCALING

    def __init__(self, sc, glyphs):
        FrameworkVoice.__init__(self, sc, glyphs)
        #: report_memory() prints once, at the first logged iteration.
        self.reported_memory = False

    def startup_lines(self):
        sc = self.sc
        model = sc.model
        args = {"bf16": sc.precision == "bf16", "fp16": sc.precision == "fp16",
                "clip_grad": 1.0, "data_parallel_size": sc.dp,
                "eval_interval": sc.eval_interval, "eval_iters": 10,
                "ffn_hidden_size": model.ffn, "global_batch_size": sc.global_batch,
                "hidden_size": model.hidden, "log_interval": sc.log_every,
                "log_throughput": True, "lr": sc.peak_lr,
                "lr_decay_style": sc.schedule, "lr_warmup_iters": sc.warmup_steps,
                "micro_batch_size": sc.micro_batch, "min_lr": sc.min_lr,
                "num_attention_heads": model.heads, "num_layers": model.layers,
                "num_query_groups": model.kv_heads,
                "padded_vocab_size": padded_vocab(model.vocab, sc.tp),
                "pipeline_model_parallel_size": sc.pp,
                "save": sc.checkpoint_dir(1), "save_interval": sc.save_interval,
                "seed": 1234, "seq_length": sc.seq_len,
                "tensor_model_parallel_size": sc.tp,
                "tokenizer_type": MEGATRON_TOKENIZERS.get(model.tokenizer,
                                                          "HuggingFaceTokenizer"),
                "train_iters": sc.total_steps, "use_distributed_optimizer": True,
                "world_size": sc.gpus}
        if sc.schedule == "wsd":
            # Megatron-LM's WSD: --lr-decay-style WSD with the cooldown's length and shape.
            args.update(lr_decay_style="WSD", lr_wsd_decay_iters=sc.decay_steps,
                        lr_wsd_decay_style="linear")
        shown = ["------------------------ arguments ------------------------"]
        for name in sorted(args, key=str.lower):
            value = args[name]
            if isinstance(value, float):
                # As the user typed it on the command line (3e-05, not 2.9999999999999997e-05).
                value = repr(float("%g" % value))
            shown.append("  %s %s %s" % (name, "." * (48 - len(name)), value))
        shown.append("-------------------- end of arguments ---------------------")
        lines = ["> building %s tokenizer ..." % args["tokenizer_type"],
                 " > padded vocab (size: %d) with %d dummy tokens (new size: %d)" % (
                     tokenizer_size(model), args["padded_vocab_size"] - tokenizer_size(model),
                     args["padded_vocab_size"]),
                 "> initializing torch distributed ..."]
        # _print_args prints the whole block in one go, at one instant.
        return (self.smi_lines() + self.torchrun_lines() + block([line(text) for text in shown])
                + [line(text) for text in lines] + self.nccl_lines())

    def setup_lines(self):
        sc = self.sc
        root = sc.checkpoint_dir(1)
        lines = ["> initialized tensor model parallel with size %d" % sc.tp,
                 "> initialized pipeline model parallel with size %d" % sc.pp,
                 "> setting random seeds to 1234 ...",
                 "> compiling dataset index builder ...",
                 "time to initialize megatron (seconds): %.3f" % (sc.init_s * 4.2),
                 "[after megatron is initialized] datetime: %s " % slot("seconds"),
                 " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): %d"
                 % (sc.model.params // (sc.tp * sc.pp))]
        if sc.resumed:
            lines.append("  successfully loaded checkpoint from %s [ t 0, p 0 ] at iteration "
                         "%d" % (root, sc.first_step - 1))
        lines += ["(min, max) time across ranks (ms):",
                  "    %s: (%.2f, %.2f)" % ("model-and-optimizer-setup ".ljust(48, "."),
                                            sc.init_s * 160, sc.init_s * 161),
                  "    %s: (%.2f, %.2f)" % ("train/valid/test-data-iterators-setup "
                                            .ljust(48, "."), sc.init_s * 40, sc.init_s * 42),
                  "training ...",
                  "[before the start of training step] datetime: %s " % slot("seconds")]
        return [line(text) for text in lines]

    def update_lines(self, state, obs):
        sc = self.sc
        # A NaN iteration is also a skipped one; the loss scale is the one the step ran at.
        nans = sum(1 for event in obs.events if event.kind == "nan")
        ms = 1000.0 * sc.tokens_per_step / state.tokens_per_s
        tflops = tflops_per_gpu(sc, state.tokens_per_s)
        skipped = skipped_in(obs.events)
        # Skipped iterations add nothing to the averaged losses: an interval of only those
        # has no loss field at all; a skipped last iteration returns no grad norm.
        loss = "" if skipped >= obs.done else " lm loss: %.6E |" % state.loss
        norm = " grad norm: %.3f |" % state.grad_norm if math.isfinite(state.grad_norm) else ""
        text = (" [%s] iteration %8d/%8d | consumed samples: %12d | elapsed time per iteration "
                "(ms): %.1f | throughput per GPU (TFLOP/s/GPU): %.1f | learning rate: %.6E | "
                "global batch size: %5d |%s loss scale: %.1f |%s "
                "number of skipped iterations: %3d | number of nan iterations: %3d |" % (
                    slot("seconds"), state.step, sc.total_steps, state.step * sc.global_batch,
                    ms, tflops, state.lr, sc.global_batch, loss,
                    obs.loss_scale if sc.precision == "fp16" else 1.0, norm, skipped, nans))
        lines = [line(text)]
        if not self.reported_memory:
            self.reported_memory = True
            allocated = int((state.mem_gib - RUNTIME_OVERHEAD_GIB) * 0.8 * GIB) // 512 * 512
            peak = int((state.mem_gib - RUNTIME_OVERHEAD_GIB) * GIB) // 512 * 512
            reserved = int(state.mem_gib - 1.0) * 1024 + sc.identity.allocator_slack_mb
            lines.append(line("[Rank 0] (after %d iterations) memory (MB) | allocated: %r | "
                              "max allocated: %r | reserved: %r | max reserved: %r" % (
                                  state.step, allocated / 1048576.0, peak / 1048576.0,
                                  float(reserved), float(reserved))))
        return lines

    def validation_lines(self, state, seg, val):
        value = float("%.6E" % val.loss)
        text = (" validation loss at iteration %d on validation set | lm loss value: %.6E | "
                "lm loss PPL: %.6E | " % (seg.last_step, value, math.exp(min(20.0, value))))
        rule = "-" * (len(text) + 1)
        return [line(rule), line(text, mark="val_loss"), line(rule)]

    def checkpoint_lines(self, state, seg, ckpt):
        root = self.sc.checkpoint_dir(seg.epoch)
        return [line("saving checkpoint at iteration %7d to %s in torch_dist format" % (
            seg.last_step, root)),
            line("  successfully saved checkpoint from iteration %7d to %s" % (
                seg.last_step, root), mark="saved")]

    def export_lines(self, state):
        return [line("[after training is done] datetime: %s " % slot("seconds"))]


class TorchtitanVoice(FrameworkVoice):
    """torchtitan (HEAD metrics format): `[titan] time - root - LEVEL - message`."""
    name = "torchtitan"
    counting = "job"
    #: torchtitan pre-trains and fully fine-tunes; it has no LoRA/QLoRA adapters.
    methods = ("full", "pretrain")

    def log(self, text, kind="info"):
        return line("[titan] %s - root - %s - %s" % (slot("logging"), log_level(kind), text),
                    kind)

    def startup_lines(self):
        sc = self.sc
        # Data parallel is sharded (FSDP) or replicated (DDP), as the run's strategy is.
        data = "dp_replicate" if sc.strategy in ("DDP", "single GPU") else "dp_shard"
        dims = [(sc.pp, "pp"), (sc.dp, data), (sc.tp, "tp")]
        dims = [d for d in dims if d[0] > 1] or [(1, data)]
        return self.smi_lines() + self.torchrun_lines() + [
            self.log("Starting job: %s training" % sc.model.name),
            self.log("Building %d-D device mesh with %r, %r" % (
                len(dims), [name for _, name in dims], [size for size, _ in dims]))
        ] + self.nccl_lines()

    def setup_lines(self):
        sc = self.sc
        model = sc.model
        capacity = sc.gpu.capacity_gib
        lines = []
        if model.tokenizer == "Llama 3 tiktoken":
            lines += [self.log("Building tiktoken tokenizer locally from ./torchtitan/datasets/"
                               "tokenizer/original/tokenizer.model"),
                      self.log("TikTokenizer built: #words %d, BOS ID 128000, EOS ID 128001" %
                               model.vocab)]
        else:
            lines.append(self.log("Building sentencepiece tokenizer locally from "
                                  "./torchtitan/datasets/tokenizer/tokenizer.model"))
        model_gib = loading_gib(sc) - RUNTIME_OVERHEAD_GIB
        lines += [
            self.log("Preparing %s dataset from %s" % (sc.dataset.name.split("/")[-1].lower(),
                                                       sc.dataset.name)),
            self.log("Building %s with ModelArgs(dim=%d, n_layers=%d, n_heads=%d, "
                     "n_kv_heads=%d, vocab_size=%d, max_seq_len=%d)" % (
                         model.name, model.hidden, model.layers, model.heads, model.kv_heads,
                         model.vocab, sc.seq_len)),
            self.log("CUDA capacity: %s with %.2fGiB memory" % (sc.gpu.name, capacity)),
            self.log("Model %s size: %s total parameters" % (
                model.name, fmt_int(model.params))),
            self.log("Applied selective activation checkpointing to the model"),
            self.log("Applied %s to the model" % ("Tensor Parallelism" if sc.tp > 1 else
                                                  "DDP" if sc.strategy == "DDP" else "FSDP")),
            self.log("Peak FLOPS used for computing MFU: %.3e" % sc.gpu.peak_flops),
            self.log("CUDA memory usage for model: %.2fGiB(%.2f%%)" % (
                model_gib, 100.0 * model_gib / capacity)),
            self.log("Checkpointing active. Checkpoints will be loaded from and saved to %s" %
                     sc.checkpoint_dir(1))]
        if sc.resumed:
            lines.append(self.log("Loading the checkpoint at step %d." % (sc.first_step - 1)))
        lines.append(self.log("Training starts at step %d, with local batch size %d, global "
                              "batch size %d, sequence length %d, total steps %d (warmup %d)" % (
                                  sc.first_step, sc.micro_batch, sc.global_batch, sc.seq_len,
                                  sc.total_steps, sc.warmup_steps)))
        return lines

    def update_lines(self, state, obs):
        sc = self.sc
        tps = int(round(state.tokens_per_s / sc.gpus))
        tflops = sc.flops_per_token * tps / 1e12
        mfu = 100.0 * sc.flops_per_token * tps / sc.gpu.peak_flops
        return [self.log("step: %2d  loss: %8.5f  grad_norm: %7.4f  memory: %5.2fGiB(%.2f%%)  "
                         "tps: %s  tflops: %s  mfu: %.2f%%" % (
                             state.step, state.loss, state.grad_norm, state.mem_gib,
                             100.0 * state.mem_gib / sc.gpu.capacity_gib, "{:,}".format(tps),
                             "{:,.2f}".format(tflops), mfu))]

    def validation_lines(self, state, seg, val):
        sc = self.sc
        return [self.log("validate step: %2d  loss: %7.4f  memory: %5.2fGiB(%.2f%%)" % (
            seg.last_step, val.loss, state.mem_gib,
            100.0 * state.mem_gib / sc.gpu.capacity_gib))._replace(mark="val_loss")]

    def checkpoint_lines(self, state, seg, ckpt):
        sc = self.sc
        if seg.last_step == sc.last_step:
            first = "Saving a full checkpoint at last step, step %d." % seg.last_step
        else:
            first = "Saving the checkpoint (or staging if async is enabled)."
        return [self.log(first),
                self.log("Finished saving the checkpoint (or staging if async is enabled)"
                         "in %.2f seconds." % ckpt.seconds)._replace(mark="saved")]

    def export_lines(self, state):
        return [self.log("Sleeping 2 seconds for other ranks to complete"),
                self.log("Training completed")]


# --- a session's next job, typed at a shell prompt on the first node -----------------------

#: Hugging Face Hub ids of the models (a custom model loads from a local directory).
HF_REPOS = {"GPT-2": "openai-community/gpt2", "GPT-2-XL": "openai-community/gpt2-xl",
            "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B", "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
            "Llama-3.2-3B": "meta-llama/Llama-3.2-3B", "Llama-2-7B": "meta-llama/Llama-2-7b-hf",
            "Falcon-7B": "tiiuae/falcon-7b", "Mistral-7B-v0.1": "mistralai/Mistral-7B-v0.1",
            "Qwen2.5-7B": "Qwen/Qwen2.5-7B", "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
            "Gemma-2-9B": "google/gemma-2-9b", "Llama-2-13B": "meta-llama/Llama-2-13b-hf",
            "GPT-NeoX-20B": "EleutherAI/gpt-neox-20b", "Gemma-2-27B": "google/gemma-2-27b",
            "Mixtral-8x7B": "mistralai/Mixtral-8x7B-v0.1",
            "Llama-2-70B": "meta-llama/Llama-2-70b-hf", "Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
            "Qwen2.5-72B": "Qwen/Qwen2.5-72B", "Llama-3.1-405B": "meta-llama/Llama-3.1-405B"}
#: Who runs the jobs of a session, and from where.
SHELL_USERS = ["ubuntu", "mlops", "train", "jdoe", "akumar", "swang"]


def hf_repo(model):
    return HF_REPOS.get(model.name, "./models/%s" % model.name.lower())


def shell_prompt(sc):
    """`user@node:~/dir$ `: the same user and directory for every job of a session."""
    a, b = sc.identity.subnet
    return "%s@%s:~/llm-training$ " % (SHELL_USERS[(a * 31 + b) % len(SHELL_USERS)],
                                        sc.hosts[0])


def torchrun_args(sc):
    """torchrun's own arguments for this cluster: standalone on one node, c10d rendezvous
    across several."""
    if sc.nodes == 1:
        return "torchrun --standalone --nproc_per_node=%d" % sc.per_node
    return ("torchrun --nnodes=%d --nproc_per_node=%d --rdzv_id=%d --rdzv_backend=c10d "
            "--rdzv_endpoint=%s:%d" % (sc.nodes, sc.per_node, sc.identity.launcher_pid % 900000,
                                       sc.hosts[0], sc.master_port))


def deepspeed_command(sc):
    """The deepspeed launcher: a hostfile and the first node's address across nodes."""
    nodes = "" if sc.nodes == 1 else (" --num_nodes %d --hostfile hostfile --master_addr %s "
                                      "--master_port %d" % (sc.nodes, sc.hosts[0],
                                                            sc.master_port))
    return ("deepspeed --num_gpus %d%s train.py --model_name_or_path %s --dataset %s "
            "--deepspeed --deepspeed_config ds_config.json" % (
                sc.per_node, nodes, hf_repo(sc.model), sc.dataset.name))


def megatron_command(sc):
    """pretrain_gpt.py under torchrun, with the model and parallel layout on the line."""
    return ("%s pretrain_gpt.py --tensor-model-parallel-size %d --pipeline-model-parallel-size "
            "%d --num-layers %d --hidden-size %d --num-attention-heads %d --seq-length %d "
            "--micro-batch-size %d --global-batch-size %d --train-iters %d --lr %g --min-lr %g "
            "--bf16 --use-distributed-optimizer --save %s --load %s" % (
                torchrun_args(sc), sc.tp, sc.pp, sc.model.layers, sc.model.hidden,
                sc.model.heads, sc.seq_len, sc.micro_batch, sc.global_batch, sc.total_steps,
                sc.peak_lr, sc.min_lr, sc.checkpoint_dir(1), sc.checkpoint_dir(1)))


#: The TOML configs torchtitan ships (torchtitan/models/llama3/train_configs/); any other
#: model trains from a config its team wrote beside the checkout.
TORCHTITAN_CONFIGS = {"Llama-3.1-8B": "./torchtitan/models/llama3/train_configs/llama3_8b.toml",
                      "Llama-3.1-70B": "./torchtitan/models/llama3/train_configs/llama3_70b.toml",
                      "Llama-3.1-405B":
                          "./torchtitan/models/llama3/train_configs/llama3_405b.toml"}


def torchtitan_command(sc):
    """torchtitan's run_train.sh with the model's TOML config."""
    own = "./train_configs/%s.toml" % re.sub(r"[^a-z0-9]+", "_", sc.model.name.lower())
    return 'CONFIG_FILE="%s" ./run_train.sh --training.steps %d' % (
        TORCHTITAN_CONFIGS.get(sc.model.name, own), sc.total_steps)


def lightning_command(sc):
    """A LightningCLI script under srun (Lightning reads the SLURM environment)."""
    return ("srun python train.py --trainer.devices=%d --trainer.num_nodes=%d "
            "--trainer.precision=%s-mixed --model.name=%s --data.dataset=%s" % (
                sc.per_node, sc.nodes, "bf16" if sc.precision == "bf16" else "16",
                hf_repo(sc.model), sc.dataset.name))


def hf_command(sc):
    """TRL's SFT script with PEFT for adapters, else transformers' run_clm.py."""
    if sc.adapters:
        return ("accelerate launch --num_processes %d --num_machines %d -m trl.scripts.sft "
                "--model_name_or_path %s --dataset_name %s --use_peft --lora_r %d%s "
                "--learning_rate %g --num_train_epochs %d --output_dir %s" % (
                    sc.gpus, sc.nodes, hf_repo(sc.model), sc.dataset.name,
                    LORA_RANK[sc.method], " --load_in_4bit" if sc.method == "qlora" else "",
                    sc.peak_lr, sc.epochs, sc.checkpoint_dir(1)))
    return ("%s run_clm.py --model_name_or_path %s --dataset_name %s "
            "--per_device_train_batch_size %d --gradient_accumulation_steps %d "
            "--learning_rate %g --num_train_epochs %d --block_size %d --bf16 --do_train "
            "--do_eval --output_dir %s" % (
                torchrun_args(sc), hf_repo(sc.model), sc.dataset.name, sc.micro_batch,
                sc.grad_accum, sc.peak_lr, sc.epochs, sc.seq_len, sc.checkpoint_dir(1)))


def classic_command(sc):
    """llmtrain's own training script under torchrun."""
    return ("%s train.py --model %s --dataset %s --method %s --epochs %d --lr %g "
            "--global-batch-size %d --seq-len %d --output-dir %s" % (
                torchrun_args(sc), hf_repo(sc.model), sc.dataset.name, sc.method, sc.epochs,
                sc.peak_lr, sc.global_batch, sc.seq_len, sc.checkpoint_dir(1)))


#: How each style's job is started at the prompt.
LAUNCH_COMMANDS = {"classic": classic_command, "hf": hf_command, "lightning": lightning_command,
                   "deepspeed": deepspeed_command, "megatron": megatron_command,
                   "torchtitan": torchtitan_command}


def launch_command(style, sc):
    """The command line that starts this job in `style`, with its real arguments."""
    return LAUNCH_COMMANDS[style](sc)


#: --style names, in the order --list-styles prints them; `random` picks a framework one.
STYLES = collections.OrderedDict((voice.name, voice) for voice in [
    ClassicVoice, HFVoice, LightningVoice, DeepSpeedVoice, MegatronVoice, TorchtitanVoice])
STYLE_TITLES = {"classic": "llmtrain's own tagged log (the default)",
                "hf": "Hugging Face transformers Trainer",
                "lightning": "PyTorch Lightning",
                "deepspeed": "DeepSpeed engine",
                "megatron": "Megatron-LM (its training loop)",
                "torchtitan": "torchtitan (PyTorch native)",
                "random": "one of the framework styles, picked from the run's seed"}


def make_voice(style, sc, glyphs):
    """The voice of one run. `random` draws from its own stream, so the run stays the same,
    and picks among the frameworks that can train it; a style asked for by name was given
    a run it trains when the scenario was drawn."""
    if style == "random":
        able = [name for name in list(STYLES)[1:] if trains(FRAMEWORKS[name], sc)]
        style = random_stream(sc.seed, "style").choice(able)
    return STYLES[style](sc, glyphs)


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
    """The row cut to `width` columns, without empty segments."""
    out = []
    room = width
    for text, style in segments:
        if room <= 0:
            break
        if text:
            out.append((clip_cells(text, room), style))
            room -= cells(out[-1][0])
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
    title = [(" llmtrain ", "title"),
             (" %s  " % PHASE_LABELS.get(state.phase, state.phase), "phase"),
             (sc.model.name, "bold"),
             ("  %s  %s" % (method_title(sc), sc.cluster_name), None)]
    hint = "q quits "
    room = width - cells(row_text(title)) - len(hint)
    if room >= 2:
        title += [(" " * room, None), (hint, "dim")]
    eta = state.eta_at(run_clock)
    eta = "--:--" if eta is None else fmt_eta(eta)
    word, done, total = state.counted
    where = "Epoch %d/%d  %s %s/%s " % (state.epoch, sc.epochs, word, fmt_int(done),
                                        fmt_int(total))
    # A resumed job's bar is this session's share; its step count is the whole job's.
    session = " of session" if sc.resumed else ""
    when = " %5.1f%%%s  Elapsed %s  ETA %s" % (100.0 * state.progress, session,
                                               fmt_duration(run_clock), eta)
    bar_width = width - len(where) - len(when) - 2
    progress = [(where, None)]
    if bar_width >= 5:
        progress.append((bar(state.progress, bar_width, glyphs), "good"))
    progress.append((when, None))
    figures = [("Loss ", "dim"), (state.loss_text or "-", "bold")]
    if state.val_history:
        figures += [("  val %s " % glyphs["val"], "dim"),
                    ("%.4f" % state.val_history[-1][1], "val")]
    figures += [("  LR ", "dim"), ("%.3e" % state.lr, None),
                ("  grad ", "dim"), ("-" if state.grad_norm is None
                                     else "%.3f" % state.grad_norm, None),
                ("  tok/s ", "dim"), (fmt_int(state.tokens_per_s), None),
                ("  mem ", "dim"), ("%.1f/%.1f GB" % (state.mem_gib, sc.gpu.capacity_gib),
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
    if height > 1:
        labels = ["%.2f" % high] + [""] * (height - 2) + ["%.2f" % low]
    else:
        labels = ["%.2f" % high]
    label_width = max(len(text) for text in labels) + 1
    if width < label_width + 4:
        label_width = 0
    plot_width = width - label_width - (1 if label_width else 0)
    per = points_per_column(len(loss_history), plot_width)
    columns = [loss_history[i:i + per] for i in range(0, len(loss_history), per)]
    spark = glyphs["spark"]
    steps = len(spark) - 1
    scale = height * steps / (high - low)
    levels = [max(1, int(round((math.fsum(c) / len(c) - low) * scale))) for c in columns]
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


def log_segments(item, clock_text):
    """One log line as (text, style) segments: time magenta, tag cyan, the text coloured by
    its kind. A line without a tag (framework styles) carries its own prefix and time."""
    if not item.tag:
        return [(item.text, KIND_STYLES.get(item.kind))]
    return [(clock_text + " ", "time"), ("[%s] " % item.tag, "phase"),
            (item.text, KIND_STYLES.get(item.kind))]


def wrap_row(segments, width, indent=2):
    """A log line folded into rows of `width`, the continuations indented, as `tail -f`
    would show it: a long framework line keeps its numbers in a narrow terminal."""
    if width <= indent + 8:
        return [clip_row(segments, width)]
    rows = []
    row = []
    room = width
    for text, style in segments:
        while text:
            if room == 0:
                rows.append(row)
                row = [(" " * indent, None)]
                room = width - indent
            piece = clip_cells(text, room)
            if not piece:  # a wide character in the last column starts the next row
                room = 0
                continue
            row.append((piece, style))
            room -= cells(piece)
            text = text[len(piece):]
    rows.append(row)
    return rows


def log_rows(entries, live, width, count):
    """The last `count` rows of the log, long lines wrapped; the live progress line is
    pinned below them, clipped to one row as tqdm keeps it."""
    if count < 1:
        return []
    room = count - 1 if live else count
    rows = []
    for segments in reversed(entries):
        if len(rows) >= room:
            break
        rows[:0] = wrap_row(segments, width)
    # Keep every row while the log is shorter than its region (a negative start would not).
    rows = rows[max(0, len(rows) - room):] if room else []
    if live:
        rows.append(clip_row(live, width))
    return rows


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

def paint(text, code, color):
    return "\x1b[%sm%s\x1b[0m" % (ANSI[code], text) if color and text else text


def plain_text(item, color, now):
    """One log line shown at `now`: `[time] [TAG] text`, coloured by kind when asked. A line
    without a tag (the summary box, framework styles) carries its own prefix and time."""
    clock_text = time.strftime("[%Y-%m-%d %H:%M:%S]", time.localtime(now))
    return "".join(paint(text, style, color) if style else text
                   for text, style in log_segments(stamp(item, now), clock_text))


def terminal_columns(stream):
    """The width the terminal on `stream` reports (TIOCGWINSZ), not an exported COLUMNS that
    may be wider than it; shutil's guess (COLUMNS, then 100) where it reports none."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size((100, 24)).columns


class PlainRenderer:
    """Prints the run as a line log; on a terminal the progress line is redrawn in place."""

    def __init__(self, stream, color, redraw):
        self.stream = stream
        self.color = color
        self.redraw = redraw
        self.live = ""

    def emit(self, item, state, now):
        if item.kind == "live" and not self.redraw:
            return  # a pipe gets one line per optimizer update, not the bar in between
        text = plain_text(item, self.color, now)
        if self.redraw and item.kind in ("progress", "live"):
            width = terminal_columns(self.stream) - 1
            # Colour codes would be cut mid-sequence: the live line is clipped uncoloured.
            shown = plain_text(item, False, now)[:width]
            self.stream.write("\r" + shown + " " * max(0, len(self.live) - len(shown)))
            self.live = shown
        else:
            if self.live and item.kind == "phase":
                # A new phase: the bar stays as the last word of the one that ended.
                self.stream.write("\n")
                self.live = ""
            if self.live:
                self.stream.write("\r" + " " * len(self.live) + "\r")
            self.stream.write(text + "\n")
            if self.live:
                self.stream.write(self.live)
        self.stream.flush()

    def start_run(self, state):
        pass  # a log needs no layout

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


class ResizeWatch:
    """SIGWINCH noted by our own handler, installed before initscr so that ncurses installs
    none (lib_tstp.c catches it only where the action is the default): ncurses would read a
    size of 32,768 or more and crash in resizeterm. The renderer resizes, clamped, itself."""

    def __init__(self):
        self.pending = False

    def install(self):
        if hasattr(signal, "SIGWINCH") and signal.getsignal(signal.SIGWINCH) == signal.SIG_DFL:
            signal.signal(signal.SIGWINCH, self.note)

    def note(self, signum, frame):
        self.pending = True

    def take(self):
        """True once after each resize (or burst of them)."""
        pending, self.pending = self.pending, False
        return pending


def clamped_size(fd):
    """(rows, columns) the terminal on fd reports, at most MAX_ROWS x MAX_COLUMNS; None when
    it reports none."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    if size.lines < 1 or size.columns < 1:
        return None
    return min(size.lines, MAX_ROWS), min(size.columns, MAX_COLUMNS)


class DashboardRenderer:
    """Draws the run full screen. Regions redraw on their own schedule and only what changed
    reaches the terminal (curses sends the difference); keys are read while idle."""

    def __init__(self, curses, screen, glyphs, color, pacer, resizes):
        self.curses = curses
        self.resizes = resizes
        self.scr = screen
        self.glyphs = glyphs
        self.styles = style_attributes(curses, color)
        self.pacer = pacer  # its run_clock() ticks the header between two lines
        self.state = None
        self.log = collections.deque(maxlen=LOG_KEEP)
        self.live = None
        self.layout = None
        self.size = screen.getmaxyx()
        self.drawn_at = {"header": 0.0, "grid": 0.0, "log": 0.0}
        self.log_dirty = True
        self.chart_key = None
        self.header_counted = None
        self.quick_polls = 0
        self.polled_at = 0.0
        self.closed = False
        self.box = []
        self.summary = []
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # vt100 and some terminals cannot hide the cursor
        # Lets curses scroll the log region with the terminal's own scrolling.
        screen.idlok(True)

    # --- the renderer interface -------------------------------------------------------
    def start_run(self, state):
        self.state = state
        self.box = []
        self.summary = []
        self.relayout()  # a new scenario may need another grid height

    def emit(self, item, state, now):
        self.state = state
        # The plain log's GPU grid lines are skipped: the dashboard has a grid of its own.
        if item.kind == "box":
            self.box.append(item.text)
        if item.kind != "grid":
            segments = log_segments(stamp(item, now),
                                    time.strftime("%H:%M:%S", time.localtime(now)))
            if item.kind in ("progress", "live"):
                self.live = segments
            else:
                if self.live and item.kind == "phase":
                    # A new phase: the bar stays in the log as the last word of the one ended.
                    self.log.append(self.live)
                    self.live = None
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
        self.summary = self.box
        self.draw(force=True)

    def close(self):
        """Give the terminal back as it was found: the one restore path, safe to repeat.
        The last finished run's summary box stays on the normal screen, as a log would."""
        if self.closed:
            return
        self.closed = True
        end_curses(self.curses)
        if self.summary:
            try:
                sys.stdout.write("\n".join(self.summary) + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # the terminal is gone; there is no one to show it to

    # --- keys and size ----------------------------------------------------------------
    def read_key(self, seconds):
        """Wait up to `seconds` for a key; q quits, a resize lays the screen out again."""
        wait_ms = max(0, int(seconds * 1000))
        self.scr.timeout(wait_ms)
        started = time.monotonic()
        key = self.scr.getch()
        if self.resizes.take():
            size = clamped_size(sys.stdout.fileno())
            if size is not None:
                try:
                    self.curses.resizeterm(*size)
                except self.curses.error:
                    pass  # the old size stays; the next resize tries again
            key = self.curses.KEY_RESIZE
        if key == -1:
            if not wait_ms:
                # A bare poll (--instant never waits): ask the terminal itself if it is there.
                if terminal_gone(0):
                    raise TerminalLost()
                return
            # A dead terminal returns at once however long the timeout: count those.
            if time.monotonic() - started < wait_ms / 4000.0:
                self.quick_polls += 1
                if self.quick_polls >= DEAD_TERMINAL_POLLS:
                    raise TerminalLost()
            else:
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
        self.log_dirty = True  # the erase took the log (and a finished run's box) with it
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
            text = clip_cells(text, room)
            self.scr.addnstr(y, x, text, len(text), attr)
        except self.curses.error:
            pass

    def put_row(self, y, segments):
        """One row of segments, the rest of the line cleared."""
        x = 0
        for text, style in segments:
            self.put(y, x, text, self.styles.get(style, 0))
            x += cells(text)
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
        if not self.pacer.caught_up:
            return  # a --started-ago backlog: the first frame shows the session as of now
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
        # A log line with a new step redraws the header with it, so the two never disagree.
        if force or now >= self.drawn_at["header"] + HEADER_REFRESH_S or (
                drew and self.state.counted != self.header_counted):
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
        clock = self.pacer.run_clock(state)
        rows = header_lines(state, layout.cols, clock, self.glyphs)
        self.header_counted = state.counted
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


def terminal_gone(fd):
    """True when the terminal on fd has hung up (closed pty, dropped SSH connection)."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        events = poller.poll(0)
    except (OSError, ValueError):
        return True
    return any(flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, flags in events)


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

def pick_glyphs(stream):
    """Unicode glyphs where the stream can encode them, ASCII otherwise."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    sample = "".join(UNICODE_GLYPHS[key] for key in (
        "full", "empty", "partial", "hline", "corners", "spark"))
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_GLYPHS
    return UNICODE_GLYPHS


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


def open_dashboard(color, ascii_only, pacer):
    """(the dashboard on this terminal, its glyphs), or None where curses cannot drive it
    (not a terminal, no curses module, no terminfo entry, initscr failing)."""
    if not sys.stdout.isatty():
        return None
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return None
    if size.lines > MAX_ROWS or size.columns > MAX_COLUMNS:
        return None  # initscr would exit on its own, or take gigabytes
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
    resizes = ResizeWatch()
    resizes.install()
    try:
        screen = curses.initscr()
    except curses.error:
        return None
    renderer = None
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        renderer = DashboardRenderer(curses, screen, glyphs, color, pacer, resizes)
    except curses.error:
        pass  # e.g. cbreak() without a terminal for its modes: the plain log it is
    finally:
        if renderer is None:
            end_curses(curses)
    return None if renderer is None else (renderer, glyphs)


def open_screen(plain, color, ascii_only, stream, pacer):
    """(renderer, glyphs): the dashboard where curses can drive this terminal, else the
    plain log with glyphs the stream can encode."""
    opened = None if plain else open_dashboard(color, ascii_only, pacer)
    if opened is not None:
        return opened
    glyphs = ASCII_GLYPHS if ascii_only else pick_glyphs(stream)
    return PlainRenderer(stream, color, stream.isatty()), glyphs


# ==========================================================================================
# The driver: a session of runs, paced against the wall clock (only the driver sleeps)
# ==========================================================================================

class ExitAfter(Exception):
    """--exit-after elapsed: end quietly with status 0."""


class Pacer:
    """Waits until each line is due: the run's clock over --speed, never drifting; and the
    wall-clock time each line is shown at. A session started `backlog` seconds ago
    (--started-ago) was launched that long before now: the lines that fell due since are
    shown at once, each stamped with the time it fell due, and the clocks count from then."""

    def __init__(self, speed=1.0, instant=False, exit_after=None, backlog=0.0,
                 monotonic=time.monotonic, wall=time.time):
        self.speed = speed
        self.instant = instant
        self.exit_after = exit_after
        self.monotonic = monotonic
        self.wall = wall
        self.started = monotonic()
        self.wall_started = wall()
        #: When the next line is due (monotonic seconds); before the first run, the launch.
        self.due = self.started - backlog
        self.anchor = self.due
        #: False while lines that fell due before now are still being shown at once.
        self.caught_up = not backlog

    def start_run(self):
        self.anchor = self.monotonic() if self.caught_up else self.due
        self.due = self.anchor

    def now(self):
        """The wall-clock time a line shown now carries: the time it fell due, in a backlog."""
        if self.caught_up:
            return self.wall()
        return self.wall_started + (self.due - self.started)

    def run_clock(self, state):
        """The run's clock as of now: during a wait, between the last line and the next."""
        if self.instant:
            return state.clock
        return min(state.clock, (self.monotonic() - self.anchor) * self.speed)

    def check_exit(self):
        if self.exit_after is not None and self.monotonic() - self.started >= self.exit_after:
            raise ExitAfter()

    def wait_until(self, due, idle):
        """Idle until `due` (monotonic seconds); a time already past returns at once."""
        due_exit = None if self.exit_after is None else self.started + self.exit_after
        while True:
            now = self.monotonic()
            if now >= due:
                return
            self.caught_up = True
            wait = min(due - now, 0.25)
            if due_exit is not None:
                wait = max(0.0, min(wait, due_exit - now))
            idle(wait)
            self.check_exit()

    def advance(self, state, seconds, idle):
        """Move the run's clock on by `seconds`, waiting in idle() until the wall agrees."""
        if not self.instant and self.caught_up:
            late = self.monotonic() - self.due
            if late > STALL_SECONDS:
                # Suspended (Ctrl-Z) or starved: carry on from here rather than replay the gap.
                self.anchor += late
        state.clock += seconds
        self.check_exit()
        if self.instant:
            return
        self.due = self.anchor + state.clock / self.speed
        self.wait_until(self.due, idle)

    def pause(self, seconds, idle):
        """A pause outside any run (between runs)."""
        if self.instant:
            self.check_exit()
            return
        self.due = (self.monotonic() if self.caught_up else self.due) + seconds / self.speed
        self.wait_until(self.due, idle)


def drive(stream, state, renderer, pacer):
    """Render each line of the run at the time the pacer reads, and wait out its delay."""
    for item, delay in stream:
        if item is not None:
            renderer.emit(item, state, pacer.now())
        if delay:
            pacer.advance(state, delay, renderer.idle)


def scenarios(first, request, runs):
    """The session's runs: `first`, already drawn, then one per seed after it (forever
    unless `runs`) on the same allocation; a seed whose draw cannot run is passed over."""
    yield first
    request = request._replace(cluster=first.cluster())
    for seed in itertools.count(first.seed + 1):
        if runs is not None and seed >= first.seed + runs:
            return
        try:
            yield build_scenario(seed, *request)
        except ScenarioError:
            continue


def run_session(runs, style, renderer, glyphs, pacer):
    """Each scenario of `runs` told in `style` and shown, with a pause between two runs."""
    for index, sc in enumerate(runs):
        if index:
            pacer.pause(3.0, renderer.idle)
        plot = Plot(sc, make_voice(style, sc, glyphs), launched=index > 0)
        pacer.start_run()
        renderer.start_run(plot.state)
        drive(plot.lines(), plot.state, renderer, pacer)
        renderer.end_run(plot.state)


# ==========================================================================================
# Signals and lifecycle: handlers only raise; one path restores the terminal
# ==========================================================================================

class Terminated(Exception):
    """A terminating signal arrived; the exit status is 128 + its number."""

    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


# How long restoring the terminal may take once a signal asked us to stop: a terminal that
# takes no output (XOFF, a pty nobody reads) must not keep the process alive.
RESTORE_GRACE_S = 2.0


def bound_the_ending(status):
    """End the process with `status` if it is still restoring after RESTORE_GRACE_S: a write
    blocked in the kernel releases the interpreter lock, so this timer thread still runs."""
    timer = threading.Timer(RESTORE_GRACE_S, os._exit, (status,))
    timer.daemon = True
    timer.start()


def raise_terminated(signum, frame):
    bound_the_ending(EXIT_SIGNAL_BASE + signum)
    raise Terminated(signum)


def raise_interrupted(signum, frame):
    bound_the_ending(EXIT_SIGNAL_BASE + signum)
    raise KeyboardInterrupt()


# Signals whose default action ends the process (signal(7)): each ends the run as SIGTERM
# does, terminal restored and 128+n; SIGINT raises KeyboardInterrupt already.
TERMINATING_SIGNALS = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
                       "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGPWR")


def install_signal_handlers():
    """Terminating signals raise; one that was ignored when we started (nohup) stays so."""
    for name in TERMINATING_SIGNALS:
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) != signal.SIG_IGN:
            signal.signal(getattr(signal, name), raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupted)


def ignore_signals():
    """While restoring the terminal, a second signal must not interrupt the restore."""
    for name in ("SIGINT",) + TERMINATING_SIGNALS:
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
    """With the reader gone (EPIPE, EIO), point stdout at /dev/null so the interpreter's
    final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ==========================================================================================
# Command line
# ==========================================================================================

COMPLETION_SHELLS = ("bash", "zsh", "fish")

#: The manual's sections beyond the options, in one place: --help's epilog and the man page
#: (--print-manpage) are both printed from them.
MANUAL = collections.OrderedDict([
    ("KEYS", "q or Esc quits, and so does Ctrl-C; nothing else is interactive. Esc quits at "
             "once, so input that starts with Esc and that curses does not decode (Alt-x, "
             "arrow keys in normal mode, mouse reports) quits too."),
    ("ENVIRONMENT", "NO_COLOR (set and not empty) turns colour off under --color auto. The "
                    "plain log is printed instead of the dashboard when stdout is not a "
                    "terminal, there is no terminal to read keys from, TERM is unset, empty or "
                    "dumb, or curses is missing or cannot start; a TERM without a terminfo "
                    "entry here is drawn as xterm(-256color) or vt100. In a locale that is not "
                    "UTF-8 (LANG, LC_ALL), curses is switched to C.UTF-8 where it exists, else "
                    "bars are drawn in ASCII (as --ascii)."),
    ("EXIT STATUS", "0 after q, --runs or --exit-after; 1 when the output cannot be written "
                    "(a full disk); 2 for bad usage; 128+N when ended by signal N, with the "
                    "terminal restored: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP or a "
                    "terminal that went away, 131 for SIGQUIT, and likewise SIGUSR1, SIGUSR2, "
                    "SIGALRM, SIGVTALRM, SIGPROF, SIGXCPU and SIGPWR. A signal ignored at start "
                    "(nohup) stays ignored."),
])


def manual_epilog():
    return "\n\n".join("%s: %s" % (heading.lower().capitalize(), text)
                        for heading, text in MANUAL.items())


class ManualFormatter(argparse.HelpFormatter):
    """argparse's help, with the epilog's paragraphs kept apart."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(textwrap.fill(paragraph, width, initial_indent=indent,
                                          subsequent_indent=indent)
                            for paragraph in text.split("\n\n"))


#: Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, line and paragraph
#: separators, and the bidirectional marks, embeddings, overrides and isolates of Unicode.
UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")

#: A word of an error line longer than MAX_VALUE_CHARS (quotes around a value stay).
LONG_VALUE = re.compile("([^\\s'\"]{%d})[^\\s'\"]{4,}" % (MAX_VALUE_CHARS - 3))


def visible(text):
    """User text as it may be shown: each character a terminal would act on, escaped
    (ESC as \\x1b, a newline as \\n), so a name can neither drive the terminal nor forge a line."""
    return UNSHOWABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"),
                          text)


class UsageParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message):
        # argparse quotes a bad value with repr, but repeats unrecognized arguments raw.
        message = LONG_VALUE.sub(r"\1...", visible(message))
        if len(message) > MAX_ERROR_CHARS:  # a value pasted by mistake stays off the line
            message = message[:MAX_ERROR_CHARS - 3] + "..."
        self.exit(EXIT_USAGE, "%s: error: %s (see --help)\n" % (self.prog, message))


def whole_number(text):
    """ASCII digits only: int() would also take ' 5', '1_000' and other scripts' digits (and
    refuses more than 4,300 of them from 3.10.7 on)."""
    if not re.match(r"^[0-9]+\Z", text):
        raise argparse.ArgumentTypeError("%r is not a whole number" % text)
    if len(text) > 24:
        raise argparse.ArgumentTypeError("%r is too long" % text)
    return int(text)


def positive_int(text, upper=None):
    value = whole_number(text)
    if value < 1 or (upper is not None and value > upper):
        raise argparse.ArgumentTypeError("%s is out of range (1-%s)" % (
            text, upper if upper else "..."))
    return value


def gpu_count(text):
    return positive_int(text, MAX_GPUS)


def seed_value(text):
    value = whole_number(text)
    if value >= 2 ** 63:
        raise argparse.ArgumentTypeError("%s is out of range (0 to 2**63-1)" % text)
    return value


def speed_value(text):
    # float() would also take ' 1e6 ', '1_000', 'inf' and other scripts' digits.
    if not re.match(r"^[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?\Z|^\.[0-9]+\Z", text):
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("%r must be a finite number > 0" % text)
    return value


def duration_value(text):
    """90, 90s, 5m, 1h30m, 1h30m15s -> seconds."""
    if len(text) > 20:
        raise argparse.ArgumentTypeError("%r is too long to be a duration" % text)
    match = re.match(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+(?:\.[0-9]+)?)s?)?\Z", text)
    if not text or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError("%r is not a duration like 90s, 5m or 1h30m"
                                         % text)
    hours, minutes, seconds = match.groups()
    if ((hours and minutes and int(minutes) >= 60)
            or ((hours or minutes) and seconds and float(seconds) >= 60)):
        raise argparse.ArgumentTypeError("%r: minutes and seconds after a larger unit must be "
                                         "under 60" % text)
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    if total <= 0:
        raise argparse.ArgumentTypeError("%r must be longer than zero" % text)
    return total


def backlog_value(text):
    """--started-ago: a duration of at most a day (a day of runs is printed in seconds)."""
    value = duration_value(text)
    if value > MAX_BACKLOG_SECONDS:
        raise argparse.ArgumentTypeError("%r is longer than %dh" % (
            text, MAX_BACKLOG_SECONDS // 3600))
    return value


def build_parser():
    parser = UsageParser(
        prog="llmtrain",
        description="A convincing, internally consistent LLM training run in your terminal.",
        epilog=manual_epilog(), formatter_class=ManualFormatter)
    parser.add_argument("--plain", action="store_true",
                        help="plain line log instead of the dashboard (default when piped)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour output (auto: on a terminal unless NO_COLOR is set)")
    parser.add_argument("--ascii", action="store_true",
                        help="ASCII bars and chart (for fonts or CJK terminals that draw "
                             "block characters double-width)")
    parser.add_argument("--seed", type=seed_value, metavar="N", help="same seed, same run")
    parser.add_argument("--speed", type=speed_value, default=1.0, metavar="F",
                        help="run F times faster than real time (default 1)")
    parser.add_argument("--instant", action="store_true", help="no pauses at all")
    parser.add_argument("--runs", type=positive_int, metavar="N", help="stop after N runs (default: forever)")
    parser.add_argument("--exit-after", type=duration_value, metavar="DURATION",
                        help="stop after a wall-clock time such as 90s, 5m or 1h30m")
    parser.add_argument("--started-ago", type=backlog_value, metavar="DURATION",
                        help="start as if launched DURATION ago (at most 24h): what came "
                             "since is printed at once with the times it came, elapsed and "
                             "ETA count from that launch; runs that would have ended by now "
                             "are printed whole (--runs counts them)")
    parser.add_argument("--model", metavar="NAME",
                        help="a model from --list-models, or a custom name with a size, "
                             "e.g. acme-13B")
    parser.add_argument("--list-models", action="store_true", help="list the known models")
    parser.add_argument("--gpus", type=gpu_count, metavar="N", help="number of GPUs (1-4096)")
    parser.add_argument("--gpu", type=str.lower, choices=list(GPUS), help="GPU type")
    parser.add_argument("--style", type=str.lower, choices=list(STYLES) + ["random"],
                        default="classic",
                        help="tell the run as a framework logs it (see --list-styles)")
    parser.add_argument("--list-styles", action="store_true", help="list the log styles")
    parser.add_argument("--humor", choices=("off", "some", "max"), default="some",
                        help="funny model/dataset/checkpoint names: never, sometimes, always")
    parser.add_argument("--print-completions", choices=COMPLETION_SHELLS, metavar="SHELL",
                        help="print a completion script for bash, zsh or fish")
    parser.add_argument("--print-manpage", action="store_true",
                        help="print the manual page (roff), e.g. for man -l -")
    parser.add_argument("-V", "--version", action="version", version="llmtrain " + __version__)
    return parser


def documented_options(parser):
    """(option strings, metavar or None, choices or None, help) of every option, in order."""
    for action in parser._actions:  # argparse has no public walk of its options
        if not action.option_strings:
            continue
        takes_value = action.nargs != 0
        metavar = (action.metavar or action.dest.upper()) if takes_value else None
        choices = list(action.choices) if action.choices else None
        yield action.option_strings, metavar, choices, (action.help or "").replace("%%", "%")


def option_values(parser):
    """{option: words a shell offers for its value}; known models stand in for --model."""
    values = {"--model": [m.name for m in MODELS]}
    for names, metavar, choices, _ in documented_options(parser):
        if choices:
            values[names[-1]] = choices
    return values


def bash_completion(parser):
    values = option_values(parser)
    flags, cases = [], []
    for names, metavar, choices, _ in documented_options(parser):
        flags.extend(names)
        if metavar:
            words = " ".join(values.get(names[-1], ()))
            cases.append("        %s) COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")); return;;"
                         % ("|".join(names), words))
    return "\n".join([
        "# bash completion for llmtrain; printed by llmtrain --print-completions bash",
        "_llmtrain() {",
        "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"",
        "    case \"$prev\" in"] + cases + [
        "    esac",
        "    COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))" % " ".join(flags),
        "}",
        "complete -F _llmtrain llmtrain llmtrain.py", ""])


def zsh_completion(parser):
    values = option_values(parser)
    specs = []
    for names, metavar, choices, text in documented_options(parser):
        text = re.sub(r"([\[\]:\\])", r"\\\1", text).replace("'", "'\\''")
        group = "(%s)" % " ".join(names) if len(names) > 1 else ""
        spell = "{%s}" % ",".join(names) if len(names) > 1 else names[0]
        value = ""
        if metavar:
            value = ":%s:(%s)" % (metavar.lower(), " ".join(values.get(names[-1], ()))) if (
                names[-1] in values) else ":%s: " % metavar.lower()
        specs.append("  %s%s'[%s]%s'" % ("'%s'" % group if group else "", spell, text, value))
    return "\n".join(["#compdef llmtrain llmtrain.py",
                      "# zsh completion for llmtrain; printed by llmtrain --print-completions zsh",
                      "_arguments -s \\"] + [spec + " \\" for spec in specs[:-1]]
                     + [specs[-1], ""])


def fish_completion(parser):
    values = option_values(parser)
    lines = ["# fish completion for llmtrain; printed by llmtrain --print-completions fish"]
    for names, metavar, choices, text in documented_options(parser):
        spell = " ".join("-l %s" % name[2:] if name.startswith("--") else "-s %s" % name[1:]
                         for name in names)
        value = ""
        if metavar:
            value = (" -x -a '%s'" % " ".join(values[names[-1]]) if names[-1] in values
                     else " -x")
        lines.append("complete -c llmtrain %s%s -d '%s'" % (
            spell, value, text.replace("\\", "\\\\").replace("'", "\\'")))
    return "\n".join(lines) + "\n"


COMPLETION_SCRIPTS = collections.OrderedDict([
    ("bash", bash_completion), ("zsh", zsh_completion), ("fish", fish_completion)])


def roff(text):
    """Text safe in a roff line: backslashes and dashes escaped, no leading control dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def manpage(parser):
    lines = ['.TH LLMTRAIN 1 "" "llmtrain %s" "User Commands"' % __version__,
             ".SH NAME", "llmtrain \\- " + roff(parser.description),
             ".SH SYNOPSIS", ".B llmtrain", "[\\fIOPTION\\fR]...",
             ".SH DESCRIPTION", roff(__doc__.split("\n\n")[1].replace("\n", " ")
                                    if __doc__ else parser.description),
             ".SH OPTIONS"]
    for names, metavar, choices, text in documented_options(parser):
        spelled = ", ".join("\\fB%s\\fR" % roff(name) for name in names)
        if metavar:
            spelled += " \\fI%s\\fR" % roff("{%s}" % ",".join(choices) if choices
                                              and names[-1] != "--model" else metavar)
        lines.extend([".TP", spelled, roff(text)])
    for heading, text in MANUAL.items():
        lines.extend([".SH " + heading, roff(text)])
    lines.extend([".SH SEE ALSO", "\\fBnvidia\\-smi\\fR(1), \\fBtorchrun\\fR(1)", ""])
    return "\n".join(lines)


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.instant and args.started_ago is not None:
        parser.error("argument --started-ago: not allowed with --instant (it has no clock)")
    if args.model is not None:
        args.model = visible(args.model)  # the one way user text reaches the screen
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


def list_styles():
    return "".join("%-11s %s\n" % (name, STYLE_TITLES[name])
                   for name in list(STYLES) + ["random"])


def wants_color(choice, stream, environ):
    if choice == "always":
        return True
    if choice == "never" or environ.get("NO_COLOR"):  # set and non-empty, per no-color.org
        return False
    return stream.isatty() and environ.get("TERM", "") not in ("", "dumb")


def tolerant(stream):
    """The stream with unencodable characters replaced: a model name the terminal's encoding
    lacks must not end the run."""
    try:
        stream.reconfigure(errors="replace")
    except AttributeError:  # Python 3.6: no reconfigure(), so a new wrapper on the same bytes
        if not hasattr(stream, "buffer"):
            return stream
        stream.flush()
        stream = io.TextIOWrapper(stream.buffer, encoding=stream.encoding, errors="replace",
                                  line_buffering=stream.line_buffering)
    except (ValueError, io.UnsupportedOperation):
        pass  # a stream that cannot change: glyphs are checked anyway
    return stream


def run_command(argv, stream):
    """What argv asks for: a listing, or a session of runs until it ends. Raises what ends
    it early (Quit, ExitAfter, KeyboardInterrupt, Terminated, TerminalLost, OSError)."""
    parser, args = parse_args(argv)
    if args.print_completions or args.print_manpage:
        stream.write(COMPLETION_SCRIPTS[args.print_completions](parser)
                     if args.print_completions else manpage(parser))
        stream.flush()
        return
    if args.list_models or args.list_styles:
        stream.write(list_models() if args.list_models else list_styles())
        stream.flush()
        return
    request = Request(args.model, args.gpus, args.gpu, args.humor, args.style, None)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    try:
        first = build_scenario(seed, *request)
    except ScenarioError as error:
        parser.error(str(error))
    pacer = Pacer(args.speed, args.instant, args.exit_after, args.started_ago or 0.0)
    renderer = None
    try:
        renderer, glyphs = open_screen(args.plain, wants_color(args.color, stream, os.environ),
                                       args.ascii, stream, pacer)
        run_session(scenarios(first, request, args.runs), args.style, renderer, glyphs, pacer)
    finally:
        ignore_signals()
        if renderer is not None:
            close_renderer(renderer)


# ==========================================================================================
# main: how the program ends, as an exit status
# ==========================================================================================

def main(argv=None):
    if sys.stdout is None:
        # Started with stdout closed (>&-): there is nowhere to print or draw.
        if sys.stderr is not None:
            sys.stderr.write("llmtrain: error: standard output is closed\n")
        return EXIT_USAGE
    # Handlers first, so a signal during start-up ends as quietly as one later on; ours go
    # in before initscr, so curses installs none of its own for SIGTERM.
    install_signal_handlers()
    stream = sys.stdout = tolerant(sys.stdout)  # the summary box writes there too
    status = EXIT_OK
    try:
        run_command(sys.argv[1:] if argv is None else argv, stream)
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
    except OSError as error:
        if error.errno in (errno.EIO, errno.ENXIO):
            silence_stdout()  # else the interpreter's own flush at exit fails with 120
            return EXIT_SIGNAL_BASE + signal.SIGHUP  # the terminal went away mid-write
        sys.stderr.write("llmtrain: error: cannot write the output: %s\n" % (
            error.strerror or error))
        silence_stdout()
        return EXIT_OUTPUT_ERROR
    try:
        stream.flush()
    except OSError:
        silence_stdout()  # a pipe or terminal that is gone has nothing left to show
    return status


if __name__ == "__main__":
    sys.exit(main())
