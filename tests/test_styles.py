"""--style: the same run told as each framework logs it.

The regular expressions are written from the frameworks' own format strings (transformers'
trainer.py and tqdm's format_meter, Lightning's model summary and progress bar, DeepSpeed's
logging and timer, Megatron-LM's training_log, torchtitan's metrics, NCCL's debug.cc), not
from llmtrain's output; the numbers are checked against the run's scenario.
"""

import ast
import collections
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
    """(scenario, final state, lines) of one whole run told in `style`, the job drawn for
    that style: the run's clock moves on by each delay, as the driver's would, without
    sleeping."""
    sc = lt.build_scenario(seed, gpus=gpus, gpu_key=gpu, style=style)
    state, shown = played(lt, sc, style)
    return sc, state, [item for _, item in shown]


def clocked(lt, seed, style, gpu=None):
    """(scenario, [(clock when shown, text)]) of one whole run told in `style`."""
    sc = lt.build_scenario(seed, gpu_key=gpu, style=style)
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
    """Runs over many seeds and every GPU type, each drawn for the style."""
    for seed in seeds:
        yield told(lt, seed, style, gpu=GPU_KEYS[seed % len(GPU_KEYS)])


def texts(lines):
    return [item.text for item in lines]


def close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


def update_times(sc):
    """{last step of an optimizer update: (its seconds, the steps it covers)}, the seconds
    summed over its micro-steps: each update's own time (drift, jitter, a slow first step
    or a straggler in it)."""
    took, step, seconds = {}, sc.first_step - 1, 0.0
    for seg in sc.segments:
        for end, micro, taken in seg.updates:
            seconds += taken
            if micro in (0, sc.micro_updates):
                took[end], step, seconds = (seconds, end - step), end, 0.0
    return took


# --- what every framework run shares: nvidia-smi, torchrun, NCCL ------------------------

GLOG = re.compile(r"^W(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) (\d+) "
                  r"site-packages/torch/distributed/run\.py:(\d+)\] (.*)$")
#: Where torch/distributed/run.py warns about OMP_NUM_THREADS in each torch release.
TORCHRUN_WARNS_AT = {"2.5.1": 793, "2.7.1": 766}
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
            assert [m.group(5) for m in glog] == ["", "*" * 41, OMP, "*" * 41]
            assert len(set(m.group(3) for m in glog)) == 1
            release = lt.software_stack(sc)["torch"].split("+")[0]
            assert {int(m.group(4)) for m in glog} == {TORCHRUN_WARNS_AT[release]}
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
        # Blackwell needs driver 570 and CUDA 12.8; the rest run the 550 / 12.4 stack.
        driver, cuda = ("570", "12\\.8") if sc.gpu.key == "b200" else ("550", "12\\.4")
        assert re.match(r"^\| NVIDIA-SMI %s\.\d+\.\d+ +Driver Version: %s\.\d+\.\d+ +"
                        r"CUDA Version: %s +\|$" % (driver, driver, cuda), table[1])


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
#: _inner_training_loop's summary, by line below its first (trainer.py of v4.46.3 and
#: v4.53.2), and where that first line is in each release.
HF_BLOCK = {0: "***** Running training *****", 1: "  Num examples = ",
            2: "  Num Epochs = ", 3: "  Instantaneous batch size per device = ",
            6: "  Total train batch size (w. parallel, distributed & accumulation) = ",
            7: "  Gradient Accumulation steps = ", 8: "  Total optimization steps = ",
            9: "  Number of trainable parameters = "}
HF_TRAINING_AT = {"4.46.3": 2314, "4.53.2": 2402}
TQDM = re.compile(r"^ *(\d+)%\|(.{10})\| (\d+)/(\d+) \[(\d+:\d\d(?::\d\d)?)<"
                  r"(\d+:\d\d(?::\d\d)?), ([ \d]\d+\.\d\d)(it/s|s/it)\]$")


def hf_number(text):
    return int(text.replace(",", ""))


def test_hf_training_block_has_the_real_step_arithmetic(lt):
    for sc, _, lines in runs(lt, "hf"):
        block = {}
        at = HF_TRAINING_AT[lt.software_stack(sc)["transformers"]]
        for text in texts(lines):
            m = HF_PREFIX.match(text)
            if m and m.group(2) == "trainer.py" and int(m.group(3)) - at in HF_BLOCK:
                expected = HF_BLOCK[int(m.group(3)) - at]
                assert m.group(4).startswith(expected)
                block[int(m.group(3)) - at] = m.group(4)[len(expected):]
        assert sorted(block) == sorted(HF_BLOCK)
        examples = hf_number(block[1])
        per_device = hf_number(block[3])
        total_batch = hf_number(block[6])
        accumulation = int(block[7])
        assert "," not in block[7]
        world = total_batch // (per_device * accumulation)
        len_dataloader = int(math.ceil(examples / float(per_device * world)))
        updates_per_epoch = len_dataloader // accumulation
        max_steps = int(math.ceil(hf_number(block[2]) * updates_per_epoch))
        assert hf_number(block[8]) == max_steps == sc.total_steps
        assert total_batch == sc.global_batch


def hf_clocked(lt, seed):
    """(scenario, final state, [(clock, text)]) of one whole run told by the HF Trainer."""
    sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)], style="hf")
    state, shown = played(lt, sc, "hf")
    return sc, state, [(clock, item.text) for clock, item in shown]


def test_hf_bar_and_dicts_round_as_hf_does_and_agree_with_the_scenario(lt):
    """The bar's rate is tqdm's: moving averages (smoothing 0.3) of the steps and of the
    seconds between two moves of the bar, divided (tqdm.std.EMA, format_meter)."""
    for seed in SEEDS:
        sc, state, shown = hf_clocked(lt, seed)
        step = None
        dicts = 0
        moved, done, steps_ema, seconds_ema = state.train_start, sc.first_step - 1, 0.0, 0.0
        steady = 0
        for clock, text in shown:
            bar = TQDM.match(text)
            if bar and int(bar.group(4)) == sc.total_steps:
                n, total = int(bar.group(3)), int(bar.group(4))
                assert bar.group(1) == ("%3.0f" % (100.0 * n / total)).strip()
                assert len(bar.group(7)) >= 5  # tqdm pads the rate to 5 ("{0:5.2f}")
                rate = float(bar.group(7))
                per_s = rate if bar.group(8) == "it/s" else 1.0 / rate
                if bar.group(8) == "s/it":
                    assert rate >= 1.0
                if n != done:  # a redraw (after evaluation) leaves the averages alone
                    steps_ema = 0.3 * (n - done) + 0.7 * steps_ema
                    seconds_ema = 0.3 * (clock - moved) + 0.7 * seconds_ema
                    ordinary = clock - moved < 1.5 * sc.step_seconds * (n - done)
                    steady = steady + 1 if ordinary else 0
                    moved = clock
                expected = steps_ema / seconds_ema
                if bar.group(8) == "it/s":
                    assert abs(rate - expected) <= 0.0051
                else:
                    assert abs(rate - 1.0 / expected) <= 0.0051
                # After 30 ordinary moves (drift and jitter of a few percent) the rate
                # is the plan's: a pause (evaluation, a slow step) has faded by then.
                if steady >= 30:
                    assert close(per_s, 1.0 / sc.step_seconds, 0.1)
                done = step = n
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
        assert [int(m.group(2)) for m in saves if m] == [s.last_step for s in sc.segments if s.saves]
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
        # Trainer averages the raw losses of the session's steps; the history holds one
        # per update, as shown (to 4 decimals), an update being log_every steps.
        ends = [u[0] for seg in sc.segments for u in seg.updates if u[1] in (0, sc.micro_updates)]
        nan_steps = [e.step for e in sc.events if e.kind == "nan"]
        done = [b - a for a, b in zip([sc.first_step - 1] + ends, ends)
                if not any(a < step <= b for step in nan_steps)]  # Trainer skips NaN losses
        assert len(done) == len(state.loss_history)
        mean = math.fsum(d * loss for d, loss in zip(done, state.loss_history)) / sum(done)
        assert abs(final["train_loss"] - mean) <= 5.1e-5


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
        saved = [s.last_step for s in sc.segments if s.saves]
        assert [int(m.group(2)) for m in checkpoints] == saved
        # save_top_k=-1 keeps every checkpoint: the rank counts up, best is the running min.
        assert [int(m.group(6)) for m in checkpoints] == list(range(1, len(saved) + 1))
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
        version = lt.software_stack(sc)["deepspeed"]
        assert ("logging.py", 107, "log_dist") in where  # log_dist's logger.log call
        assert all(w[:2] != ("logging.py", 128) for w in where)
        # DeepSpeedConfig.print's per-key line (v0.16.5 and v0.17.5 config.py).
        item = {"0.16.5": "1004", "0.17.5": "958"}[version]
        dump = [m.group(5) for m in logged if m.group(2, 3) == ("config.py", item)]
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
        took = update_times(sc)
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
            taken, done = took[number]
            assert close(float(timer.group(5)), sc.global_batch * done / taken, 1e-6)
            assert float(timer.group(6)) <= float(timer.group(7)) < sc.gpu.capacity_gib
        # 0.17's checkpoint engine announces a save when it begins and no longer when done.
        said = {"0.16.5": "is ready now!", "0.17.5": "is begin to save!"}[version]
        tags = [re.search(r"Checkpoint (global_step\d+) %s$" % said, m.group(5))
                for m in logged]
        assert [t.group(1) for t in tags if t] == ["global_step%d" % s.last_step
                                                   for s in sc.segments if s.saves]


def test_deepspeed_fp16_overflows_count_as_skipped_steps(lt):
    seen = 0
    for seed in range(1, 120):
        sc, _, lines = told(lt, seed, "deepspeed", gpu="a100")
        if sc.precision != "fp16" or sc.first_step != 1:
            continue
        out = texts(lines)
        overflow = [t for t in out if "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted "
                                      "loss scale: " in t]
        # Every overflow is reported, also one inside a group of steps logged together; a
        # NaN loss makes NaN gradients, which the loss scaler takes for an overflow too.
        assert len(overflow) == len([e for e in sc.events if e.kind in ("overflow", "nan")])
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
    assert seen >= 3


# --- Megatron-LM ------------------------------------------------------------------------

MEGATRON = re.compile(r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration (.{8})/(.{8}) \| "
                      r"consumed samples: (.{12}) \| elapsed time per iteration \(ms\): "
                      r"(\d+\.\d) \| throughput per GPU \(TFLOP/s/GPU\): (\d+\.\d) \| "
                      r"learning rate: (\d\.\d{6}E[+-]\d\d) \| global batch size: (.{5}) \| "
                      r"(?:lm loss: (\d\.\d{6}E[+-]\d\d) \| )?loss scale: (\d+\.\d) \| "
                      r"(?:grad norm: (\d+\.\d{3}) \| )?number of skipped iterations: (.{3}) \| "
                      r"number of nan iterations: (.{3}) \|$")
MEGATRON_VAL = re.compile(r"^ validation loss at iteration (\d+) on validation set \| "
                          r"lm loss value: (\d\.\d{6}E[+-]\d\d) \| lm loss PPL: "
                          r"(\d\.\d{6}E[+-]\d\d) \| $")


def test_megatron_iteration_lines_agree_with_the_scenario(lt):
    for sc, state, lines in runs(lt, "megatron"):
        out = texts(lines)
        iterations = [MEGATRON.match(t) for t in out if MEGATRON.match(t)]
        assert iterations
        took = update_times(sc)
        for m in iterations:
            iteration = int(m.group(1))
            assert int(m.group(2)) == sc.total_steps
            assert int(m.group(3)) == iteration * sc.global_batch
            assert int(m.group(7)) == sc.global_batch
            # Each interval's own time (drift, jitter, a slow first step, a straggler), and
            # the throughput that time implies.
            taken, done = took[iteration]
            assert float(m.group(4)) == pytest.approx(1000.0 * taken / done, abs=0.051)
            assert float(m.group(5)) == pytest.approx(
                sc.tflops_per_gpu * sc.step_seconds * done / taken, rel=1e-3, abs=0.051)
            if iteration == sc.segments[0].updates[0][0]:
                # The first iteration after a (re)start is slow: compile, NCCL set-up, warm-up.
                assert float(m.group(5)) < sc.tflops_per_gpu
            skipped = set(e.step for e in sc.events if e.kind in ("nan", "overflow")
                          and iteration - done < e.step <= iteration)
            assert (m.group(8) is None) == (len(skipped) == done)
            assert (m.group(10) is None) == (iteration in skipped)
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
        assert [int(m.group(1)) for m in saved if m] == [s.last_step for s in sc.segments
                                                         if s.saves]
        assert sum(1 for t in out if re.match(r"^saving checkpoint at iteration (.{7}) to \S+ "
                                              r"in torch_dist format$", t)) == \
            sum(1 for s in sc.segments if s.saves)


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
        took = update_times(sc)
        for m in steps:
            if m.group(2).strip() == "nan":  # a NaN batch: loss and grad_norm are nan
                assert m.group(3).strip() == "nan"
                continue
            assert re.match(r"^ *\d+\.\d{5}$", m.group(2))
            # An fp16 overflow step: the loss is known, the gradient norm is inf.
            assert re.match(r"^ *(\d+\.\d{4}|inf)$", m.group(3))
            tps = int(m.group(6).replace(",", ""))
            taken, done = took[int(m.group(1))]
            assert abs(tps - sc.tokens_per_step * done / taken / sc.gpus) <= 0.5 + 1e-6
            if int(m.group(1)) == sc.segments[0].updates[0][0]:  # warm-up: step 1 is slow
                assert tps < sc.cluster_tokens_per_s / float(sc.gpus)
            mfu = 100.0 * sc.flops_per_token * tps / sc.gpu.peak_flops
            assert abs(float(m.group(8)) - mfu) <= 0.006
            assert abs(float(m.group(7).replace(",", "")) - sc.flops_per_token * tps / 1e12) \
                <= 0.006
            gib = float(m.group(4))
            assert gib < sc.gpu.capacity_gib
            assert abs(float(m.group(5)) - 100.0 * gib / sc.gpu.capacity_gib) <= 0.02
        finished = [t for t in logged if t.startswith("Finished saving the checkpoint")]
        assert len(finished) == sum(1 for seg in sc.segments if seg.saves)
        assert all(re.match(r"^Finished saving the checkpoint \(or staging if async is "
                            r"enabled\)in \d+\.\d\d seconds\.$", t) for t in finished)
        assert "Saving a full checkpoint at last step, step %d." % sc.last_step in logged


# --- one run, many voices -----------------------------------------------------------------

def test_every_style_that_trains_a_run_tells_it_the_same(lt):
    """One scenario, told by each voice whose framework trains it: the same losses,
    evaluations, tokens, checkpoints and clock."""
    for seed in SEEDS[:20]:
        gpu = GPU_KEYS[seed % len(GPU_KEYS)]
        sc = lt.build_scenario(seed, gpu_key=gpu)
        styles = [s for s in ["classic"] + FRAMEWORKS if lt.trains(lt.FRAMEWORKS[s], sc)]
        assert len(styles) >= 2
        told_as = set()
        for style in styles:
            state, _ = played(lt, lt.build_scenario(seed, gpu_key=gpu), style, lt.ASCII_GLYPHS)
            told_as.add((tuple(state.loss_history), tuple(state.val_history),
                         state.tokens_trained, state.checkpoints, state.step,
                         round(state.clock, 6)))
        assert len(told_as) == 1, seed


def test_printed_losses_are_the_runs_losses_in_every_style(lt):
    """The run's history holds one loss per update as classic prints it (4 decimals), NaN
    updates left out; Megatron prints no loss for an interval whose iterations were all
    skipped, torchtitan prints every step's."""
    checked = 0
    for seed in SEEDS[:24]:
        sc = lt.build_scenario(seed)
        if not all(lt.trains(lt.FRAMEWORKS[s], sc) for s in WHOLE_MODEL_ONLY):
            continue
        checked += 1
        state, shown = played(lt, sc, "megatron")
        took = update_times(sc)
        events = dict((e.step, e.kind) for e in sc.events)
        kinds = [[events.get(step) for step in range(end - took[end][1] + 1, end + 1)]
                 for end in sorted(took)]
        kept = [k for k in kinds if "nan" not in k]
        assert len(kept) == len(state.loss_history)
        shown_by_megatron = [h for h, k in zip(state.loss_history, kept)
                             if not all(kind in ("nan", "overflow") for kind in k)]
        megatron = [float(m.group(8)) for m in (MEGATRON.match(item.text) for _, item in shown)
                    if m and m.group(8)]
        _, shown = played(lt, lt.build_scenario(seed), "torchtitan")
        titan = [float(m.group(2)) for m in (TITAN_STEP.match(TITAN.match(item.text).group(2))
                                             for _, item in shown if TITAN.match(item.text))
                 if m and m.group(2).strip() != "nan"]
        for printed, history in ((megatron, shown_by_megatron), (titan, state.loss_history)):
            assert len(printed) == len(history)
            assert all(abs(p - h) <= 0.5e-4 + 1e-9 for p, h in zip(printed, history))
    assert checked >= 5


def test_random_never_picks_a_framework_that_cannot_train_the_run(lt):
    picked = {}
    for seed in range(120):
        sc = lt.build_scenario(seed)
        voice = lt.make_voice("random", sc, lt.ASCII_GLYPHS)
        assert lt.trains(lt.FRAMEWORKS[voice.name], sc)
        picked.setdefault(sc.method in ADAPTERS, set()).add(voice.name)
    assert picked[True] and not picked[True] & set(WHOLE_MODEL_ONLY)
    assert picked[False] & set(WHOLE_MODEL_ONLY)


@pytest.mark.parametrize("style", FRAMEWORKS)
def test_a_style_asked_by_name_is_given_a_job_it_trains_and_speaks_it(lt, style):
    """Megatron-LM and torchtitan have no adapters, DeepSpeed's engine no FSDP, the HF
    Trainer and Lightning no pipeline stages: the job drawn for a style is one its
    framework runs, and the whole log is in its voice."""
    methods = set()
    for seed in range(60):
        sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)], style=style)
        assert lt.trains(lt.FRAMEWORKS[style], sc), seed
        assert lt.make_voice(style, sc, lt.ASCII_GLYPHS).name == style
        methods.add(sc.method)
    if style in WHOLE_MODEL_ONLY:
        assert not methods & set(ADAPTERS)
    else:
        assert methods & set(ADAPTERS)
    assert {"full", "pretrain"} <= methods


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

def slow_step_runs(lt, style, count=8):
    """Runs drawn for `style` with a slow step (a straggling rank) among the steps shown."""
    found = 0
    for seed in range(400):
        sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)], style=style)
        if any(e.kind == "slow" for e in sc.events):
            found += 1
            yield sc
        if found == count:
            return
    assert found


@pytest.mark.parametrize("style", ["classic"] + FRAMEWORKS)
def test_a_slow_step_shows_only_as_a_slow_step(lt, style):
    """A rank that straggles for a few seconds holds up the collective and so the step:
    nothing times out, nothing is printed about it; the step's own figures show it."""
    for sc in slow_step_runs(lt, style):
        event = next(e for e in sc.events if e.kind == "slow")
        _, shown = played(lt, sc, style)
        for _, item in shown:
            assert not re.search(r"(?i)timed? ?out|watchdog|straggl|stall|NCCL WARN|error",
                                 item.text), item.text
        update = next(u for seg in sc.segments for u in seg.updates
                      if u[0] >= event.step and u[1] in (0, sc.micro_updates))
        assert update[2] > event.extra_s >= 1.0
        taken, done = update_times(sc)[update[0]]
        if style == "classic":
            # Its progress line reports the tokens of the update over its whole time.
            step_text = "Step %d/" % ((update[0] - 1) % sc.steps_per_epoch + 1)
            rate = next(float(re.search(r"\| ([\d,]+) tok/s", item.text).group(1)
                              .replace(",", "")) for _, item in shown
                        if item.kind == "progress" and step_text in item.text
                        and "Epoch %d/" % sc.epoch_of(update[0]) in item.text)
            assert rate == pytest.approx(sc.tokens_per_step * done / taken, abs=1.0)
            assert rate < sc.cluster_tokens_per_s * (taken - event.extra_s) / taken * 1.1


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


def test_deepspeed_prints_the_user_config_through_its_scientific_notation_encoder(lt):
    """DeepSpeedConfig.print_user_config: json.dumps with ScientificNotationEncoder, whose
    iterencode keeps the file's key order, writes numbers above 1e3 as %e and joins the
    entries of an object with ', ' before each newline (runtime/config_utils.py)."""
    config = collections.OrderedDict([
        ("train_batch_size", 1024), ("steps_per_print", 10),
        ("optimizer", collections.OrderedDict([("type", "AdamW"), ("params", {"lr": 3e-4})])),
        ("bf16", {"enabled": True}), ("betas", [0.9, 0.95])])
    assert lt.deepspeed_json(config) == (
        '{\n    "train_batch_size": 1.024000e+03, \n    "steps_per_print": 10, \n'
        '    "optimizer": {\n        "type": "AdamW", \n        "params": {\n'
        '            "lr": 0.0003\n        }\n    }, \n    "bf16": {\n'
        '        "enabled": true\n    }, \n    "betas": [0.9, 0.95]\n}')


def test_deepspeed_config_declares_the_schedule_the_run_follows(lt):
    """WarmupCosineLR warms up logarithmically unless told otherwise, and decays to 1e-4 of
    the peak by default: the config must say what the printed LR does."""
    kinds = set()
    for sc, state, lines in runs(lt, "deepspeed"):
        out = texts(lines)
        start = next(i for i, t in enumerate(out) if t.endswith("json = {"))
        end = next(i for i in range(start, len(out)) if out[i] == "}")
        config = json.loads("{" + "\n".join(out[start + 1:end + 1]))
        if sc.schedule == "wsd":
            # DeepSpeed has no warmup-stable-decay scheduler: the script passes its own.
            assert "scheduler" not in config
            kinds.add("client")
            continue
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
    assert kinds >= {"WarmupCosineLR", "WarmupDecayLR"}
