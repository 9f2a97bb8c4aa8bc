"""--style: the same run told as each framework logs it.

The regular expressions are written from the frameworks' own format strings (transformers'
trainer.py and tqdm's format_meter, Lightning's model summary and progress bar, DeepSpeed's
logging and timer, Megatron-LM's training_log, torchtitan's metrics, NCCL's debug.cc), not
from llmtrain's output; the numbers are checked against the run's scenario.
"""

import ast
import json
import math
import re
import struct

import pytest

from conftest import played, run_cli

SEEDS = list(range(1, 41))
FRAMEWORKS = ["hf", "lightning", "deepspeed", "megatron", "torchtitan"]
GPU_KEYS = [None, "a100", "a100-40g", "h100", "h200", "b200", "mi300x"]


def told(lt, seed, style, gpu=None, gpus=None):
    """(scenario, final state, lines) of one whole run told in `style`: the run's clock moves
    on by each delay, as the driver's would, without sleeping."""
    sc = lt.build_scenario(seed, gpus=gpus, gpu_key=gpu)
    state, shown = played(lt, sc, style)
    return sc, state, [item for _, item in shown]


def clocked(lt, seed, style, gpu=None):
    """(scenario, [(clock when shown, text)]) of one whole run told in `style`."""
    sc = lt.build_scenario(seed, gpu_key=gpu)
    _, shown = played(lt, sc, style)
    return sc, [(clock, item.text) for clock, item in shown]


def seconds_of(text):
    """tqdm's MM:SS or H:MM:SS in seconds."""
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


#: Frameworks that train whole models only: no LoRA/QLoRA adapters.
WHOLE_MODEL_ONLY = ("megatron", "torchtitan")
ADAPTERS = ("lora", "qlora")


def runs(lt, style, seeds=SEEDS):
    """Runs over many seeds and every GPU type (those the framework can train)."""
    told_any = False
    for seed in seeds:
        gpu = GPU_KEYS[seed % len(GPU_KEYS)]
        if style in WHOLE_MODEL_ONLY and lt.build_scenario(seed, gpu_key=gpu).method in \
                ADAPTERS:
            continue
        told_any = True
        yield told(lt, seed, style, gpu=gpu)
    assert told_any


def texts(lines):
    return [item.text for item in lines]


def close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


# --- what every framework run shares: nvidia-smi, torchrun, NCCL ------------------------

GLOG = re.compile(r"^W(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) (\d+) "
                  r"site-packages/torch/distributed/run\.py:793\] (.*)$")
OMP = ("Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to "
       "avoid your system being overloaded, please further tune the variable for optimal "
       "performance in your application as needed.")
NCCL = re.compile(r"^([\w.-]+):(\d+):(\d+) \[(\d+)\] NCCL INFO (.*)$")
SMI_GPU = re.compile(r"^\| +(\d+)  (.+?) +On  \|   00000000:([0-9A-F]{2}):([0-9A-F]{2})\.0 Off "
                     r"\| +0 \|$")
SMI_USE = re.compile(r"^\| N/A +(\d+)C +P0 +(\d+)W / +(\d+)W \| +(\d+)MiB / +(\d+)MiB \| +"
                     r"(\d+)% +Default \|$")


@pytest.mark.parametrize("style", FRAMEWORKS)
def test_every_framework_starts_as_torchrun_and_nccl_do(lt, style):
    for sc, _, lines in runs(lt, style, SEEDS[:16]):
        out = texts(lines)
        glog = [GLOG.match(t) for t in out if GLOG.match(t)]
        if sc.per_node > 1:
            assert [m.group(4) for m in glog] == ["", "*" * 41, OMP, "*" * 41]
            assert len(set(m.group(3) for m in glog)) == 1
        else:
            assert glog == []
        nccl = [NCCL.match(t) for t in out if NCCL.match(t)]
        if sc.gpus == 1:
            assert nccl == []
            continue
        stack = lt.software_stack(sc)
        suffix = "hip" if sc.gpu.vendor == "amd" else "cuda"
        assert nccl[0].group(5) == "NCCL version %s+%s%s" % (stack["nccl"], suffix,
                                                             stack["cuda"])
        assert nccl[0].group(2) == nccl[0].group(3), "the first lines run on the main thread"
        bus_of = {}
        comm_ids = set()
        for m in nccl:
            host, pid, tid, device, body = m.groups()
            assert host in sc.hosts
            assert int(device) < sc.per_node
            ranks = re.search(r"\bnranks (\d+) cudaDev (\d+) nvmlDev (\d+) busId (\w+) "
                              r"commId (0x[0-9a-f]+)", body)
            if ranks:
                assert int(ranks.group(1)) == sc.gpus
                assert ranks.group(2) == ranks.group(3) == device
                assert bus_of.setdefault(device, ranks.group(4)) == ranks.group(4)
                comm_ids.add(ranks.group(5))
            shape = re.search(r"nRanks (\d+) nNodes (\d+) localRanks (\d+) localRank (\d+)",
                              body)
            if shape:
                assert tuple(map(int, shape.groups()[:3])) == (sc.gpus, sc.nodes, sc.per_node)
            channel = re.match(r"Channel (\d\d)/(\d\d) :((?: +\d+)+)$", body)
            if channel:
                assert sorted(map(int, channel.group(3).split())) == list(range(sc.gpus))
        assert len(comm_ids) == 1
        assert any(t.endswith("- Init COMPLETE") for t in out)
        assert any(m.group(5) in ("Connected all rings",) for m in nccl)
        if sc.gpu.vendor != "nvidia":
            assert not any(SMI_GPU.match(t) for t in out)
            continue
        rows = [SMI_GPU.match(t) for t in out if SMI_GPU.match(t)]
        use = [SMI_USE.match(t) for t in out if SMI_USE.match(t)]
        assert len(rows) == len(use) == sc.per_node
        for row, reading in zip(rows, use):
            assert row.group(2) == sc.gpu.name
            device = row.group(1)
            # NCCL's busId is the PCI address as one hex number: 00000000:18:00.0 -> 18000.
            assert row.group(4) == "00"
            if device in bus_of:
                assert (row.group(3) + "000").lower() == bus_of[device]
            assert int(reading.group(3)) == sc.gpu.power_cap
            assert int(reading.group(5)) == sc.gpu.smi_mib
            assert int(reading.group(2)) <= sc.gpu.power_cap
        table = [t for t in out if t.startswith(("|", "+"))]
        assert all(len(t) == 91 for t in table)
        assert re.match(r"^\| NVIDIA-SMI 550\.\d+\.\d+ +Driver Version: 550\.\d+\.\d+ +"
                        r"CUDA Version: 12\.4 +\|$", table[1])


def test_framework_lines_carry_their_own_prefix_and_no_tag(lt):
    for style in FRAMEWORKS:
        _, _, lines = told(lt, 4, style)
        assert all(item.tag == "" for item in lines)
        assert not any("\x00" in item.text for item in lines), "every time slot is filled"
    result = run_cli("--plain", "--instant", "--runs", "1", "--seed", "4", "--style", "hf")
    assert result.returncode == 0, result.stderr
    assert not re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[", result.stdout, re.M)
    assert re.search(r"^\[INFO\|trainer\.py:2314\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} >> "
                     r"\*\*\*\*\* Running training \*\*\*\*\*$", result.stdout, re.M)


def test_time_slots_are_filled_in_each_framework_format(lt):
    now = 1733855280.405
    item = lt.line("W%s 1 x] %s %s %s" % (lt.slot("glog"), lt.slot("logging"),
                                          lt.slot("seconds"), lt.slot("smi")), "info", "")
    text = lt.stamp(item, now).text
    assert re.match(r"^W\d{4} \d\d:\d\d:\d\d\.405000 1 x\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,405 "
                    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z][a-z]{2} [A-Z][a-z]{2} \d\d "
                    r"\d\d:\d\d:\d\d \d{4}$", text)
    plain = lt.line("no slots here", "info", "TAG")
    assert lt.stamp(plain, now) is plain


# --- Hugging Face Trainer -------------------------------------------------------------

HF_PREFIX = re.compile(r"^\[(INFO|WARNING|ERROR)\|([\w.]+\.py):(\d+)\] "
                       r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} >> (.*)$")
HF_BLOCK = {2314: "***** Running training *****", 2315: "  Num examples = ",
            2316: "  Num Epochs = ", 2317: "  Instantaneous batch size per device = ",
            2320: "  Total train batch size (w. parallel, distributed & accumulation) = ",
            2321: "  Gradient Accumulation steps = ", 2322: "  Total optimization steps = ",
            2323: "  Number of trainable parameters = "}
TQDM = re.compile(r"^ *(\d+)%\|(.{10})\| (\d+)/(\d+) \[(\d+:\d\d(?::\d\d)?)<"
                  r"(\d+:\d\d(?::\d\d)?), ([ \d]\d+\.\d\d)(it/s|s/it)\]$")


def hf_number(text):
    return int(text.replace(",", ""))


def test_hf_training_block_has_the_real_step_arithmetic(lt):
    for sc, _, lines in runs(lt, "hf"):
        block = {}
        for text in texts(lines):
            m = HF_PREFIX.match(text)
            if m and m.group(2) == "trainer.py" and int(m.group(3)) in HF_BLOCK:
                assert m.group(4).startswith(HF_BLOCK[int(m.group(3))])
                block[int(m.group(3))] = m.group(4)[len(HF_BLOCK[int(m.group(3))]):]
        assert sorted(block) == sorted(HF_BLOCK)
        examples = hf_number(block[2315])
        per_device = hf_number(block[2317])
        total_batch = hf_number(block[2320])
        accumulation = int(block[2321])
        assert "," not in block[2321]
        world = total_batch // (per_device * accumulation)
        len_dataloader = int(math.ceil(examples / float(per_device * world)))
        updates_per_epoch = len_dataloader // accumulation
        max_steps = int(math.ceil(hf_number(block[2316]) * updates_per_epoch))
        assert hf_number(block[2322]) == max_steps == sc.total_steps
        assert total_batch == sc.global_batch


def test_hf_bar_and_dicts_round_as_hf_does_and_agree_with_the_scenario(lt):
    for sc, state, lines in runs(lt, "hf"):
        step = None
        dicts = 0
        for text in texts(lines):
            bar = TQDM.match(text)
            if bar and int(bar.group(4)) == sc.total_steps:
                n, total = int(bar.group(3)), int(bar.group(4))
                assert bar.group(1) == ("%3.0f" % (100.0 * n / total)).strip()
                assert len(bar.group(7)) == 5
                rate = float(bar.group(7))
                per_s = rate if bar.group(8) == "it/s" else 1.0 / rate
                if bar.group(8) == "s/it":
                    assert rate >= 1.0
                if n == sc.segments[0].updates[0][0]:  # a (re)started job's slow first step
                    assert per_s < 1.0 / sc.step_seconds
                else:
                    assert close(per_s, 1.0 / sc.step_seconds, 0.03)
                step = n
            elif text.startswith("{'loss'"):
                # A NaN batch in the window shows as nan, as HF prints it.
                record = ast.literal_eval(re.sub(r"\b(nan|inf)\b", "None", text))
                assert list(record) == ["loss", "grad_norm", "learning_rate", "epoch"]
                if record["loss"] is None or record["grad_norm"] is None:
                    continue
                assert round(record["loss"], 4) == record["loss"]
                assert record["learning_rate"] == lt.lr_at(sc, step)
                assert record["epoch"] == round(step / float(sc.steps_per_epoch), 2)
                norm = record["grad_norm"]
                assert struct.unpack("f", struct.pack("f", norm))[0] == norm
                dicts += 1
        assert dicts >= 3


def test_hf_eval_and_end_of_training_metrics_add_up(lt):
    for sc, state, lines in runs(lt, "hf"):
        out = texts(lines)
        evals = [ast.literal_eval(t) for t in out if t.startswith("{'eval_loss'")]
        assert len(evals) == len(sc.segments)
        for record in evals:
            assert list(record) == ["eval_loss", "eval_runtime", "eval_samples_per_second",
                                    "eval_steps_per_second", "epoch"]
            assert round(record["eval_runtime"], 4) == record["eval_runtime"]
            assert round(record["eval_samples_per_second"], 3) == \
                record["eval_samples_per_second"]
            ratio = record["eval_samples_per_second"] / record["eval_steps_per_second"]
            assert ratio <= sc.micro_batch * sc.dp * 1.01
        saves = [re.search(r">> Saving model checkpoint to (\S+)/checkpoint-(\d+)$", t)
                 for t in out]
        assert [int(m.group(2)) for m in saves if m] == [s.last_step for s in sc.segments]
        assert "Training completed. Do not forget to share your model on " \
               "huggingface.co/models =)" in out
        final = [ast.literal_eval(t) for t in out if t.startswith("{'train_runtime'")]
        assert len(final) == 1
        final = final[0]
        assert list(final) == ["train_runtime", "train_samples_per_second",
                               "train_steps_per_second", "train_loss", "epoch"]
        ratio = final["train_samples_per_second"] / final["train_steps_per_second"]
        assert close(ratio, sc.global_batch, 0.02)
        # Rates are rounded to 3 decimals: allow that on top of 1%.
        assert abs(final["train_steps_per_second"] * final["train_runtime"]
                   - sc.session_steps) <= 0.0005 * final["train_runtime"] + \
            0.01 * sc.session_steps
        assert close(final["train_loss"], sum(state.loss_history) / len(state.loss_history),
                     1e-9)


# --- PyTorch Lightning ------------------------------------------------------------------

LIGHTNING_BAR = re.compile(r"^Epoch (\d+): +(\d+)%\|(.{10})\| (\d+)/(\d+) \[(\d+:\d\d(?::\d\d)?)"
                           r"<(\d+:\d\d(?::\d\d)?), ([ \d]\d+\.\d\d)it/s, v_num=(\d+)"
                           r"((?:, \w+=[^,\]]+)*)\]$")
LIGHTNING_CKPT = re.compile(r"^Epoch (\d+), global step (\d+): 'val_loss' reached "
                            r"(\d+\.\d{5}) \(best (\d+\.\d{5})\), saving model to '(.+)' as "
                            r"top (\d+)$")


def readable(number):
    """Lightning's get_human_readable_count (utilities/model_summary)."""
    labels = [" ", "K", "M", "B", "T"]
    digits = len(str(int(number))) if number else 1
    groups = min(-(-digits // 3), len(labels))
    value = number / 10.0 ** (3 * (groups - 1))
    if groups == 1 or value >= 100:
        return "%s %s" % (format(int(value), ","), labels[groups - 1])
    return "%s %s" % (format(value, ",.1f"), labels[groups - 1])


def test_lightning_start_summary_bar_and_checkpoint_lines(lt):
    assert readable(124439808) == "124 M" and readable(8030261248) == "8.0 B"
    for sc, state, lines in runs(lt, "lightning"):
        out = texts(lines)
        precision = "bfloat16" if sc.precision == "bf16" else "16bit"
        for expected in ["Using %s Automatic Mixed Precision (AMP)" % precision,
                         "GPU available: True (cuda), used: True",
                         "TPU available: False, using: 0 TPU cores",
                         "HPU available: False, using: 0 HPUs",
                         "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/%d" % sc.gpus,
                         "-" * 100, "distributed_backend=nccl",
                         "All distributed processes registered. Starting with %d processes"
                         % sc.gpus]:
            assert expected in out
        header = out.index(next(t for t in out if re.match(r"^  \| Name +\| Type +\| Params "
                                                          r"\| Mode $", t)))
        assert out[header + 1] == "-" * (len(out[header]) + 6)
        row = [cell.strip() for cell in out[header + 2].split(" | ")]
        trainable = sc.model.params
        total = sc.model.params
        if sc.method in ("lora", "qlora"):
            trainable = lt.lora_params(sc.model, lt.LORA_RANK[sc.method])
            total += trainable
        assert row[3] == readable(total).strip()
        footer = out[header + 4:header + 10]
        assert footer[0] == readable(trainable).ljust(10) + "Trainable params"
        assert footer[2] == readable(total).ljust(10) + "Total params"
        assert footer[3] == format(total * 4 / 1e6, ",.3f").ljust(10) + \
            "Total estimated model params size (MB)"
        bars = [LIGHTNING_BAR.match(t) for t in out if t.startswith("Epoch ")]
        bars = [m for m in bars if m]
        assert bars
        for m in bars:
            assert int(m.group(5)) == sc.steps_per_epoch * sc.grad_accum
            assert 0 <= int(m.group(1)) < sc.epochs
            for key, value in re.findall(r", (\w+)=([^,]+)", m.group(10)):
                number = float(value)
                assert value == "{:.3g}".format(number) or value == str(number)
        checkpoints = [LIGHTNING_CKPT.match(t) for t in out if LIGHTNING_CKPT.match(t)]
        assert [int(m.group(2)) for m in checkpoints] == [s.last_step for s in sc.segments]
        # save_top_k=-1 keeps every checkpoint: the rank counts up, best is the running min.
        assert [int(m.group(6)) for m in checkpoints] == list(range(1, len(sc.segments) + 1))
        values = [float(m.group(3)) for m in checkpoints]
        assert [float(m.group(4)) for m in checkpoints] == [
            min(values[:i + 1]) for i in range(len(values))]
        limit = "max_epochs=%d" % sc.epochs if sc.first_step == 1 and sc.loss_curve == "sft" \
            else "max_steps=%d" % sc.total_steps
        assert "`Trainer.fit` stopped: `%s` reached." % limit in out


def test_lightning_bar_elapsed_is_this_processs_time_even_after_a_resume(lt):
    resumed = 0
    for seed in range(0, 40):
        sc, shown = clocked(lt, seed, "lightning", GPU_KEYS[seed % len(GPU_KEYS)])
        resumed += sc.first_step > 1
        started = {}
        for clock, text in shown:
            m = LIGHTNING_BAR.match(text)
            if not m:
                continue
            elapsed = seconds_of(m.group(6))
            # tqdm times the bar from its creation in this session: never more than the
            # session's clock, and it moves on as the clock does.
            assert elapsed <= clock + 1.0, (seed, text)
            first = started.setdefault(m.group(1), (clock, elapsed))
            assert abs((elapsed - first[1]) - (clock - first[0])) <= 2.0, (seed, text)
    assert resumed


# --- DeepSpeed --------------------------------------------------------------------------

DS = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[(INFO|WARNING|ERROR)\] "
                r"\[([\w.]+):(\d+):(\w+)\] (.*)$")
DS_STEP = re.compile(r"^\[Rank 0\] step=(\d+), skipped=(\d+), lr=\[([^\]]+)\], "
                     r"mom=\[\[0\.9, 0\.95\], \[0\.9, 0\.95\]\]$")
DS_TIMER = re.compile(r"^epoch=(\d+)/micro_step=(\d+)/global_step=(\d+), "
                      r"RunningAvgSamplesPerSec=(\S+), CurrSamplesPerSec=(\S+), "
                      r"MemAllocated=(\d+\.\d\d)GB, MaxMemAllocated=(\d+\.\d\d)GB$")


def test_deepspeed_prefix_config_steps_and_checkpoints(lt):
    for sc, state, lines in runs(lt, "deepspeed"):
        logged = [DS.match(t) for t in texts(lines) if DS.match(t)]
        where = [(m.group(2), int(m.group(3)), m.group(4)) for m in logged]
        assert ("logging.py", 128, "log_dist") in where
        assert all(w[:2] != ("logging.py", 96) for w in where)
        dump = [m.group(5) for m in logged if m.group(2, 3) == ("config.py", "1005")]
        names = []
        for text in dump:
            entry = re.match(r"^  (\w+) (\.*) ?(.*)$", text)
            if entry.group(1) == "json":
                continue
            names.append(entry.group(1))
            assert len(entry.group(2)) == max(0, 29 - len(entry.group(1)))
            if entry.group(1) == "train_batch_size":
                assert int(entry.group(3)) == sc.global_batch == \
                    sc.micro_batch * sc.grad_accum * sc.dp
        assert names == sorted(names)
        assert "  train_micro_batch_size_per_gpu  %d" % sc.micro_batch in dump
        steps = [DS_STEP.match(m.group(5)) for m in logged if m.group(2) == "logging.py"]
        steps = [s for s in steps if s]
        timers = [DS_TIMER.match(m.group(5)) for m in logged
                  if (m.group(2), m.group(3), m.group(4)) == ("timer.py", "264", "stop")]
        assert steps and len(steps) == len(timers)
        for step, timer in zip(steps, timers):
            number = int(step.group(1))
            assert step.group(3) == "%r, %r" % (lt.lr_at(sc, number), lt.lr_at(sc, number))
            assert int(timer.group(3)) == number
            assert int(timer.group(2)) == number * sc.grad_accum
            steady = sc.global_batch / sc.step_seconds
            if number == sc.segments[0].updates[0][0]:  # a (re)started job's slow first step
                assert float(timer.group(5)) < steady
            else:
                assert close(float(timer.group(5)), steady, 0.01)
            assert float(timer.group(6)) <= float(timer.group(7)) < sc.gpu.capacity_gib
        tags = [re.search(r"Checkpoint (global_step\d+) is ready now!$", m.group(5))
                for m in logged]
        assert [t.group(1) for t in tags if t] == ["global_step%d" % s.last_step
                                                   for s in sc.segments]


def test_deepspeed_fp16_overflows_count_as_skipped_steps(lt):
    seen = 0
    for seed in range(1, 120):
        sc = lt.build_scenario(seed, gpu_key="a100")
        if sc.precision != "fp16" or sc.first_step != 1:
            continue
        _, _, lines = told(lt, seed, "deepspeed", gpu="a100")
        out = texts(lines)
        overflow = [t for t in out if "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted "
                                      "loss scale: " in t]
        # Every overflow is reported, also one inside a group of steps logged together.
        assert len(overflow) == len([e for e in sc.events if e.kind == "overflow"])
        expected = [r"Attempted loss scale: 65536, but hysteresis is 2\. Reducing hysteresis "
                    r"to 1$", r"Attempted loss scale: 65536, reducing to 32768$",
                    r"Attempted loss scale: 32768, reducing to 16384$"]
        for text, pattern in zip(overflow, expected):
            assert re.search(pattern, text)
        last = [DS_STEP.match(DS.match(t).group(5)) for t in out if DS.match(t)]
        last = [m for m in last if m][-1]
        skipped = [e for e in sc.events if e.kind in ("overflow", "nan")]
        assert int(last.group(2)) == len(skipped)
        seen += 1
    assert seen


# --- Megatron-LM ------------------------------------------------------------------------

MEGATRON = re.compile(r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration (.{8})/(.{8}) \| "
                      r"consumed samples: (.{12}) \| elapsed time per iteration \(ms\): "
                      r"(\d+\.\d) \| throughput per GPU \(TFLOP/s/GPU\): (\d+\.\d) \| "
                      r"learning rate: (\d\.\d{6}E[+-]\d\d) \| global batch size: (.{5}) \| "
                      r"lm loss: (\d\.\d{6}E[+-]\d\d) \| loss scale: (\d+\.\d) \| "
                      r"grad norm: (\d+\.\d{3}) \| number of skipped iterations: (.{3}) \| "
                      r"number of nan iterations: (.{3}) \|$")
MEGATRON_VAL = re.compile(r"^ validation loss at iteration (\d+) on validation set \| "
                          r"lm loss value: (\d\.\d{6}E[+-]\d\d) \| lm loss PPL: "
                          r"(\d\.\d{6}E[+-]\d\d) \| $")


def test_megatron_iteration_lines_agree_with_the_scenario(lt):
    for sc, state, lines in runs(lt, "megatron"):
        out = texts(lines)
        iterations = [MEGATRON.match(t) for t in out if MEGATRON.match(t)]
        assert iterations
        for m in iterations:
            iteration = int(m.group(1))
            assert int(m.group(2)) == sc.total_steps
            assert int(m.group(3)) == iteration * sc.global_batch
            assert int(m.group(7)) == sc.global_batch
            if iteration == sc.segments[0].updates[0][0]:
                # The first iteration after a (re)start is slow: compile, NCCL set-up, warm-up.
                assert float(m.group(4)) > sc.step_seconds * 1000
                assert float(m.group(5)) < sc.tflops_per_gpu
            else:
                assert close(float(m.group(5)), sc.tflops_per_gpu, 0.015)
                assert close(float(m.group(4)), sc.step_seconds * 1000, 0.015)
            assert m.group(6) == "%.6E" % lt.lr_at(sc, iteration)
            if sc.precision == "bf16":
                assert m.group(9) == "1.0"
            assert 0 <= int(m.group(11)) and 0 <= int(m.group(12))
        begin = out.index("------------------------ arguments ------------------------")
        end = out.index("-------------------- end of arguments ---------------------")
        names = []
        for text in out[begin + 1:end]:
            entry = re.match(r"^  (\w+) (\.+) (.+)$", text)
            assert len(entry.group(1)) + len(entry.group(2)) == 48
            names.append(entry.group(1))
        assert names == sorted(names, key=str.lower)
        validations = 0
        for index, text in enumerate(out):
            m = MEGATRON_VAL.match(text)
            if not m:
                continue
            validations += 1
            assert out[index - 1] == out[index + 1] == "-" * (len(text) + 1)
            loss = float(m.group(2))
            assert m.group(3) == "%.6E" % math.exp(min(20.0, loss))
        assert validations == len(sc.segments)
        saved = [re.match(r"^  successfully saved checkpoint from iteration (.{7}) to \S+$", t)
                 for t in out]
        assert [int(m.group(1)) for m in saved if m] == [s.last_step for s in sc.segments]
        assert sum(1 for t in out if re.match(r"^saving checkpoint at iteration (.{7}) to \S+ "
                                              r"in torch_dist format$", t)) == len(sc.segments)


# --- torchtitan -------------------------------------------------------------------------

TITAN = re.compile(r"^\[titan\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - root - "
                   r"(INFO|WARNING|ERROR) - (.*)$")
TITAN_STEP = re.compile(r"^step: +(\d+)  loss: (.{8,})  grad_norm: (.{7,})  memory: (.{5,})"
                        r"GiB\((\d+\.\d\d)%\)  tps: (\d{1,3}(?:,\d{3})*)  tflops: "
                        r"(\d{1,3}(?:,\d{3})*\.\d\d)  mfu: (\d+\.\d\d)%$")


def test_torchtitan_steps_mfu_and_checkpoints(lt):
    for sc, state, lines in runs(lt, "torchtitan"):
        logged = [TITAN.match(t).group(2) for t in texts(lines) if TITAN.match(t)]
        assert "Peak FLOPS used for computing MFU: %.3e" % sc.gpu.peak_flops in logged
        assert "CUDA capacity: %s with %.2fGiB memory" % (sc.gpu.name, sc.gpu.capacity_gib) \
            in logged
        steps = [TITAN_STEP.match(t) for t in logged if TITAN_STEP.match(t)]
        assert steps
        for m in steps:
            if m.group(2).strip() == "nan":  # a NaN batch: loss and grad_norm are nan
                assert m.group(3).strip() == "nan"
                continue
            assert re.match(r"^ *\d+\.\d{5}$", m.group(2))
            # An fp16 overflow step: the loss is known, the gradient norm is inf.
            assert re.match(r"^ *(\d+\.\d{4}|inf)$", m.group(3))
            tps = int(m.group(6).replace(",", ""))
            if int(m.group(1)) == sc.segments[0].updates[0][0]:  # warm-up: step 1 is slow
                assert tps < sc.cluster_tokens_per_s / float(sc.gpus)
            else:
                assert close(tps, sc.cluster_tokens_per_s / float(sc.gpus), 0.01)
            mfu = 100.0 * sc.flops_per_token * tps / sc.gpu.peak_flops
            assert abs(float(m.group(8)) - mfu) <= 0.006
            assert abs(float(m.group(7).replace(",", "")) - sc.flops_per_token * tps / 1e12) \
                <= 0.006
            gib = float(m.group(4))
            assert gib < sc.gpu.capacity_gib
            assert abs(float(m.group(5)) - 100.0 * gib / sc.gpu.capacity_gib) <= 0.02
        finished = [t for t in logged if t.startswith("Finished saving the checkpoint")]
        assert len(finished) == len(sc.segments)
        assert all(re.match(r"^Finished saving the checkpoint \(or staging if async is "
                            r"enabled\)in \d+\.\d\d seconds\.$", t) for t in finished)
        assert "Saving a full checkpoint at last step, step %d." % sc.last_step in logged


# --- one run, many voices -----------------------------------------------------------------

def test_every_style_tells_the_same_run(lt):
    for seed in SEEDS[:20]:
        gpu = GPU_KEYS[seed % len(GPU_KEYS)]
        base = None
        sc = lt.build_scenario(seed, gpu_key=gpu)
        styles = ["classic"] + FRAMEWORKS
        for style in styles:
            sc = lt.build_scenario(seed, gpu_key=gpu)
            state, _ = played(lt, sc, style, lt.ASCII_GLYPHS)
            told_as = (state.loss_history, state.val_history, state.tokens_trained,
                       state.checkpoints, state.step, round(state.clock, 6))
            if base is None:
                base = told_as
            assert told_as == base, (seed, style)


def test_printed_losses_are_the_runs_losses_in_every_style(lt):
    for seed in SEEDS[:24]:
        if lt.build_scenario(seed).method in ADAPTERS:
            continue
        sc, state, lines = told(lt, seed, "megatron")
        skipped = set(e.step for e in sc.events if e.kind in ("nan", "overflow"))
        megatron = [float(m.group(8)) for m in map(MEGATRON.match, texts(lines))
                    if m and int(m.group(1)) not in skipped]
        _, _, lines = told(lt, seed, "torchtitan")
        titan = [float(m.group(2)) for m in (TITAN_STEP.match(TITAN.match(t).group(2))
                                             for t in texts(lines) if TITAN.match(t))
                 if m and int(m.group(1)) not in skipped]
        # The run's history holds the loss as classic prints it, to 4 decimals.
        for printed in (megatron, titan):
            assert len(printed) == len(state.loss_history)
            assert all(abs(p - h) <= 0.5e-4 + 1e-9 for p, h in zip(printed,
                                                                 state.loss_history))


def test_random_never_picks_a_framework_that_cannot_train_the_runs_method(lt):
    picked = {}
    for seed in range(120):
        sc = lt.build_scenario(seed)
        voice = lt.make_voice("random", sc, lt.ASCII_GLYPHS)
        assert voice.notice is None
        picked.setdefault(sc.method in ADAPTERS, set()).add(voice.name)
    assert picked[True] and not picked[True] & set(WHOLE_MODEL_ONLY)
    assert picked[False] & set(WHOLE_MODEL_ONLY)


@pytest.mark.parametrize("style", WHOLE_MODEL_ONLY)
def test_an_adapter_run_asked_of_megatron_or_torchtitan_says_so_once_and_stays_the_run(lt,
                                                                                      style):
    adapter_runs = 0
    for seed in range(40):
        gpu = GPU_KEYS[seed % len(GPU_KEYS)]
        sc, state, lines = told(lt, seed, style, gpu=gpu)
        out = texts(lines)
        notices = [t for t in out if t.startswith("llmtrain: --style ")]
        told_as = lt.make_voice(style, sc, lt.UNICODE_GLYPHS).name
        if sc.method not in ADAPTERS:
            assert notices == [] and told_as == style
            continue
        adapter_runs += 1
        # One clear line first, then the run told where adapters live: transformers + PEFT.
        assert len(notices) == 1 and out[0] == notices[0]
        assert "--style %s:" % style in notices[0] and "LoRA" in notices[0]
        assert "this %s run" % lt.method_title(sc) in notices[0]
        assert told_as == "hf"
        assert not any("use_distributed_optimizer" in t or t.startswith("[titan]")
                       for t in out)
        trainable = [t for t in out if "Number of trainable parameters = " in t]
        assert trainable[0].endswith(
            format(lt.lora_params(sc.model, lt.LORA_RANK[sc.method]), ","))
        # Same seed, same run: the numbers are the classic run's.
        _, classic, _ = told(lt, seed, "classic", gpu=gpu)
        assert (state.loss_history, state.tokens_trained, state.checkpoints) == \
            (classic.loss_history, classic.tokens_trained, classic.checkpoints)
    assert adapter_runs >= 3


def test_random_style_is_a_framework_style_fixed_by_the_seed(lt):
    picked = set()
    for seed in SEEDS:
        sc = lt.build_scenario(seed)
        voice = lt.make_voice("random", sc, lt.ASCII_GLYPHS)
        assert voice.name in FRAMEWORKS
        assert lt.make_voice("random", sc, lt.ASCII_GLYPHS).name == voice.name
        picked.add(voice.name)
    assert len(picked) >= 3
    strip = re.compile(r"\d\d:\d\d:\d\d[.,]\d+|\d\d:\d\d:\d\d")
    first, second = [run_cli("--plain", "--instant", "--runs", "1", "--seed", "11", "--style",
                             "random") for _ in range(2)]
    assert first.returncode == 0, first.stderr
    assert strip.sub("", first.stdout) == strip.sub("", second.stdout)


def test_classic_is_the_default_style():
    strip = re.compile(r"^\[[\d: -]+\] ", re.M)
    default = run_cli("--plain", "--instant", "--runs", "1", "--seed", "5")
    classic = run_cli("--plain", "--instant", "--runs", "1", "--seed", "5", "--style", "classic")
    assert default.returncode == classic.returncode == 0
    assert strip.sub("", default.stdout) == strip.sub("", classic.stdout)


# --- command line -----------------------------------------------------------------------

def test_list_styles_lists_every_style():
    result = run_cli("--list-styles")
    assert result.returncode == 0 and result.stderr == ""
    names = [row.split()[0] for row in result.stdout.splitlines()]
    assert names == ["classic"] + FRAMEWORKS + ["random"]


@pytest.mark.parametrize("bad", ["bogus", "", "hugging"])
def test_a_bad_style_is_a_one_line_usage_error(bad):
    result = run_cli("--style", bad, "--instant", "--runs", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--style" in result.stderr


# --- the pure formatters against the reference's own examples ---------------------------

def test_tqdm_meter_reproduces_the_reference_bars(lt):
    glyphs = lt.UNICODE_GLYPHS
    assert lt.tqdm_meter(450, 1000, 83, 5.37, glyphs, "Epoch 0: ", False,
                         ", v_num=0, train_loss=2.310") == \
        "Epoch 0:  45%|████▌     | 450/1000 [01:23<01:42,  5.37it/s, v_num=0, train_loss=2.310]"
    assert lt.tqdm_meter(1218, 1218, 4876, 0.25, glyphs) == \
        "100%|██████████| 1218/1218 [1:21:16<00:00,  4.00s/it]"
    assert lt.tqdm_meter(40, 1218, 161, 1 / 4.03, glyphs).startswith(
        "  3%|▎         | 40/1218 [02:41<")
    assert lt.tqdm_meter(40, 1095, 3, 10.84, glyphs, "Epoch 1: ", False, ", v_num=10") == \
        "Epoch 1:   4%|▎         | 40/1095 [00:03<01:37, 10.84it/s, v_num=10]"
    assert lt.tqdm_meter(3, 10, 1, 0.5, glyphs, inverse=False).endswith(" 0.50it/s]")


def test_lightning_and_hf_number_formats_match_the_reference(lt):
    assert lt.human_count(124439808) == "124 M"
    assert lt.human_count(8030261248) == "8.0 B"
    assert lt.human_count(0) == "0  "
    assert lt.human_count(1200) == "1.2 K"
    assert "{:,.3f}".format(124439808 * 4 / 1e6) == "497.759"
    assert lt.tqdm_number(2.3104) == "2.31" and lt.tqdm_number(3e-4) == "0.0003"
    assert lt.tqdm_number(1.5e-5) == "1.5e-5"
    record = {"loss": 1.3377, "grad_norm": lt.fp32(0.8823109865188599),
              "learning_rate": 1.9859901214690094e-05, "epoch": 0.25}
    assert lt.hf_dict(record) == "{'loss': 1.3377, 'grad_norm': 0.8823109865188599, " \
                                 "'learning_rate': 1.9859901214690094e-05, 'epoch': 0.25}"


def test_hf_num_examples_keeps_the_worked_examples_arithmetic(lt):
    """52,002 examples on 8 GPUs x 4 x GA 4 give 406 updates an epoch; the number shown also
    fills whole accumulation steps, so that epoch = micro_steps / len_dataloader lands on
    whole epochs at each epoch's last update."""
    sc = lt.build_scenario(1)
    sc.micro_batch, sc.dp, sc.grad_accum, sc.steps_per_epoch = 4, 8, 4, 406
    sc.packed_samples = 52002
    shown = lt.hf_num_examples(sc)
    len_dataloader = -(-shown // 32)
    assert shown <= 52002 and len_dataloader // 4 == 406 and len_dataloader == 406 * 4
    sc.packed_samples = 51950
    assert lt.hf_num_examples(sc) == 51950


# --- rare events, told consistently in every voice ----------------------------------------

NCCL_WARN = re.compile(r"^([\w.-]+):(\d+):(\d+) \[(\d+)\] ([\w/]+\.cc):(\d+) NCCL WARN (.*)$")
STALL = re.compile(r"AllReduce completed after a (\d+\.\d\d) s stall \((.*)\); training "
                   r"continues$")


def nccl_seeds(lt, count):
    """Seeds whose run has an NCCL stall inside the steps it shows."""
    found = []
    for seed in range(400):
        sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)])
        if any(e.kind == "nccl" for e in sc.events):
            found.append(seed)
        if len(found) == count:
            break
    return found


@pytest.mark.parametrize("style", ["classic"] + FRAMEWORKS)
def test_an_nccl_stall_says_how_long_it_stalled_and_recovers(lt, style):
    fabrics = set()
    for seed in nccl_seeds(lt, 14):
        sc, shown = clocked(lt, seed, style, GPU_KEYS[seed % len(GPU_KEYS)])
        event = next(e for e in sc.events if e.kind == "nccl")
        out = [text for _, text in shown]
        for text in out:
            # Nothing claims a timeout that could not have elapsed, or a fatal error.
            assert not re.search(r"timed out|timeout after|error 12|Watchdog caught|attempt "
                                 r"\d/\d|30000 ms|\b600000 m", text), text
        stalls = [(i, STALL.search(t)) for i, t in enumerate(out) if STALL.search(t)]
        assert len(stalls) == 1, (seed, style)
        at, stall = stalls[0]
        assert float(stall.group(1)) == round(event.extra_s, 2)
        # The line before the stall comes right before the pause; the pause is the stall.
        assert shown[at][0] - shown[at - 1][0] == pytest.approx(event.extra_s)
        ib = lt.ib_fabric(sc)
        fabrics.add(ib)
        before = out[at - 1]
        if ib:
            retransmits = int(re.match(r"(\d+) IB retransmissions? of 7 allowed",
                                       stall.group(2)).group(1))
            assert retransmits * 4.096e-6 * 2 ** 18 <= event.extra_s
            assert "NCCL_IB_TIMEOUT=18, 1.07 s; NCCL_IB_RETRY_CNT=7" in before
            if style != "classic":
                warn = NCCL_WARN.match(before)
                assert warn, before
                host, pid, tid, device = warn.group(1), warn.group(2), warn.group(3), \
                    int(warn.group(4))
                assert host in sc.hosts and device < sc.per_node and pid != tid
                assert "mlx5_%d:1" % device in warn.group(7)
        else:
            assert "straggler" in stall.group(2) and "NET/IB" not in before
    assert fabrics == {True, False}


def fp16_resumed_seeds(lt):
    found = []
    for seed in range(200):
        sc = lt.build_scenario(seed, gpu_key="a100-40g")
        if sc.precision == "fp16" and sc.first_step > 1:
            found.append(seed)
    return found


def power_of_two(value):
    return value > 0 and math.frexp(value)[0] == 0.5


def test_a_resumed_fp16_run_shows_a_settled_loss_scale_in_every_voice(lt):
    seeds = fp16_resumed_seeds(lt)
    assert len(seeds) >= 4
    settled = set()
    for seed in seeds:
        sc, _, lines = told(lt, seed, "megatron", gpu="a100-40g")
        scales = [float(m.group(9)) for m in map(MEGATRON.match, texts(lines)) if m]
        assert scales and all(power_of_two(s) and 2 ** 12 <= s <= 2 ** 17 for s in scales)
        assert scales == sorted(scales, reverse=True), "only overflows move it, downwards"
        settled.add(scales[0])
        _, _, lines = told(lt, seed, "deepspeed", gpu="a100-40g")
        for text in texts(lines):
            attempted = re.search(r"Attempted loss scale: (\d+)", text)
            if attempted:
                assert 2 ** 12 <= int(attempted.group(1)) <= 2 ** 17
        _, _, lines = told(lt, seed, "classic", gpu="a100-40g")
        out = texts(lines)
        mixed = next(t for t in out if t.startswith("Mixed precision: fp16"))
        assert "initial scale" not in mixed
        start = float(re.search(r"scale (\d+) restored from the checkpoint", mixed).group(1))
        assert power_of_two(start) and 2 ** 14 <= start <= 2 ** 17
        reduced = [float(m.group(1)) for m in (re.search(
            r"reducing loss scale to (\d+\.\d)$", t) for t in out) if m]
        assert reduced == [start / 2 ** (i + 1) for i in range(len(reduced))]
    assert len(settled) >= 2, "the settled scale comes from the scenario's seed"


def test_deepspeed_config_declares_the_schedule_the_run_follows(lt):
    """WarmupCosineLR warms up logarithmically unless told otherwise, and decays to 1e-4 of
    the peak by default: the config must say what the printed LR does."""
    kinds = set()
    for sc, state, lines in runs(lt, "deepspeed"):
        out = texts(lines)
        start = next(i for i, t in enumerate(out) if t.endswith("json = {"))
        end = next(i for i in range(start, len(out)) if out[i] == "}")
        config = json.loads("{" + "\n".join(out[start + 1:end + 1]))
        scheduler = config["scheduler"]
        params = scheduler["params"]
        assert params["warmup_type"] == "linear"
        assert params["warmup_num_steps"] == sc.warmup_steps
        assert params["total_num_steps"] == sc.total_steps
        if sc.schedule == "cosine":
            assert scheduler["type"] == "WarmupCosineLR"
            assert params["cos_min_ratio"] == pytest.approx(sc.min_lr / sc.peak_lr)
        else:
            assert scheduler["type"] == "WarmupDecayLR"
            assert params["warmup_max_lr"] == sc.peak_lr and params["warmup_min_lr"] == 0
        kinds.add(scheduler["type"])
    assert kinds == {"WarmupCosineLR", "WarmupDecayLR"}
