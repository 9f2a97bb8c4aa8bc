"""Issue 2: whole runs, driven without sleeping, checked against the invariants a watcher
would check: tokens, throughput and MFU, LR against the schedule, memory, the clock. Each
test covers dozens of seeds."""

import math
import re

import pytest

from conftest import load_llmtrain, tell

lt = load_llmtrain()

SEEDS = list(range(60))

PROGRESS = re.compile(
    r"Epoch (?P<epoch>\d+)/(?P<epochs>\d+) \[[^\]]*\] (?P<pct>[\d.]+)%  "
    r"Step (?P<step>\d+)/(?P<steps>\d+)"
    r"(?: \(step (?P<next>\d+): micro-batch (?P<micro>\d+)/(?P<accum>\d+)\))?"
    r" \| Loss: (?P<loss>[\d.]+) \| LR: (?P<lr>[\d.e+-]+) \| Grad Norm: (?P<gn>[\d.]+)"
    r" \| GPU Mem: (?P<used>[\d.]+)/(?P<total>[\d.]+) GB \| (?P<tps>[\d,]+) tok/s"
    r" \| (?P<sps>[\d,.]+) samples/s \| ETA: (?P<eta>[\d:]+)$")
FOUND = re.compile(r"Found (\d+) (.+) GPUs? across (\d+) nodes?$")
BATCH = re.compile(r"Batch: ([\d,]+) \(global\), (\d+) \(per GPU\)$")
ACCUM = re.compile(r"Gradient accumulation: (\d+) steps?, ([\d,]+) tokens per optimizer step$")
OPTIMIZER = re.compile(r"Optimizer: AdamW, peak LR ([\d.e+-]+), warmup ([\d,]+) steps, "
                       r"(cosine decay|linear decay|constant, then linear decay over the last "
                       r"([\d,]+) steps \(WSD\)) to ([\d.e+-]+)$")
EPOCHS = re.compile(r"Epochs: (\d+), steps per epoch: ([\d,]+), total steps: ([\d,]+)$")
VAL = re.compile(r"Val Loss: ([\d.]+)  \|  Val PPL: ([\d.]+)  \|  Accuracy: ([\d.]+)%$")
SPIKE = re.compile(r"Loss spike at step ([\d,]+): .*reducing LR by 50%")
CKPT_SAVED = re.compile(r"Checkpoint saved in ([\d.]+)s")
PRODUCT_NAMES = {"NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3",
                 "NVIDIA H200", "NVIDIA B200", "AMD Instinct MI300X"}


class Recorder(object):
    """A renderer that keeps (clock, line) pairs instead of printing."""

    glyphs = None

    def __init__(self):
        self.lines = []
        self.idled = 0.0

    def emit(self, item, state, now):
        self.lines.append((state.clock, lt.stamp(item, now)))

    def idle(self, seconds):
        self.idled += seconds

    def end_run(self, state):
        pass


def record(seed, **options):
    """One whole run through the real driver, instantly."""
    sc = lt.build_scenario(seed, **options)
    plot = tell(lt, sc)
    recorder = Recorder()
    pacer = lt.Pacer(instant=True)
    lt.drive(plot.lines(), plot.state, recorder, pacer)
    return sc, plot.state, recorder.lines


def texts(lines):
    return [item.text for _, item in lines]


def find(lines, pattern):
    for text in texts(lines):
        match = pattern.search(text)
        if match:
            return match
    raise AssertionError("no line matches %s" % pattern.pattern)


def progress(lines, kind="progress"):
    """(clock, match) of every metrics line (kind progress: one per optimizer update; live
    lines only move the bar in place between two of them)."""
    rows = []
    for clock, item in lines:
        match = PROGRESS.search(item.text)
        if match and item.kind == kind:
            rows.append((clock, match))
    return rows


def number(text):
    return float(text.replace(",", ""))


def parse_hms(text):
    days = 0
    if "d " in text:
        day_text, text = text.split("d ")
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


RUNS = {}


def run_of(seed):
    if seed not in RUNS:
        RUNS[seed] = record(seed)
    return RUNS[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_run_length_and_phase_pacing(seed):
    sc, state, lines = run_of(seed)
    # 2-4 minutes at --speed 1: start-up, 30-60 s segments (a resumed job's final decay is
    # one longer stretch), each with its validation; saves take what their bytes take.
    assert 120 <= state.clock <= 240
    assert 5 <= sc.init_s <= 10
    export = lt.export_seconds(sc, sc.rank0_write_gbs)
    assert export + 0.8 <= sc.export_s <= export + 2.0
    longest = 170 if sc.kind == "pretrain" else 60
    for seg in sc.segments:
        assert 5 <= seg.validation_s <= 10
        saving = lt.checkpoint_seconds(sc, sc)
        assert (saving + 0.3 <= seg.checkpoint_s <= saving + 0.8) if seg.saves \
            else seg.checkpoint_s == 0
        training = sum(update[2] for update in seg.updates)
        warmup = sc.first_step_extra_s if seg.index == 0 else 0.0  # the slow first step
        stalls = sum(e.extra_s for e in sc.events
                     if e.kind == "slow" and seg.first_step <= e.step <= seg.last_step)
        assert 30 * 0.9 <= training - warmup - stalls <= longest * 1.25
    ready = [clock for clock, item in lines if item.text == "Ready to train!"]
    assert len(ready) == 1 and 5 <= ready[0] <= 10


@pytest.mark.parametrize("seed", SEEDS)
def test_updates_come_every_third_of_a_second_to_a_second(seed):
    """The progress line moves every 0.3-1 s: one metrics line per optimizer update when
    steps are short, the bar in place (live) between the metrics lines of long steps."""
    sc, state, lines = run_of(seed)
    slow = set(e.step for e in sc.events if e.kind == "slow")
    gaps = []
    last = None
    for clock, item in lines:
        match = PROGRESS.search(item.text)
        if item.kind in ("warn", "error", "phase"):
            last = None  # events and phase changes are pauses of their own
        elif match and item.kind in ("progress", "live"):
            step = (int(match.group("epoch")) - 1) * sc.steps_per_epoch + int(
                match.group("step"))
            if last is not None and not slow & set(range(step - sc.log_every, step + 2)):
                gaps.append(clock - last)
            last = clock
    assert gaps
    # Throughput drifts a percent or two; the first update after a pause runs slower.
    assert all(0.29 <= gap <= 1.2 for gap in gaps), (min(gaps), max(gaps))
    assert sum(1 for gap in gaps if gap <= 1.03) >= 0.9 * len(gaps)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_metrics_line_per_optimizer_update(seed):
    """No step is reported twice: what moves between two optimizer steps is the bar in
    place, never a new log line."""
    sc, state, lines = run_of(seed)
    steps = [(int(m.group("epoch")), int(m.group("step"))) for _, m in progress(lines)]
    assert len(steps) == len(set(steps))
    assert not any(m.group("micro") for _, m in progress(lines))
    if sc.micro_updates > 1:
        assert all(m.group("micro") for _, m in progress(lines, "live"))


@pytest.mark.parametrize("seed", SEEDS)
def test_progress_never_goes_backwards(seed):
    sc, state, lines = run_of(seed)
    previous = (0, 0, 0.0)
    for _, match in progress(lines):
        current = (int(match.group("epoch")), int(match.group("step")),
                   float(match.group("pct")))
        assert current >= previous
        assert int(match.group("steps")) == sc.steps_per_epoch
        assert int(match.group("epochs")) == sc.epochs
        assert 0 <= current[2] <= 100
        if match.group("micro"):
            # Micro-batches shown after step s belong to step s + 1, and the label says so.
            assert int(match.group("next")) == current[1] + 1
            assert 1 <= int(match.group("micro")) < int(match.group("accum")) == sc.grad_accum
        previous = current


@pytest.mark.parametrize("seed", SEEDS)
def test_lr_follows_the_announced_schedule(seed):
    sc, state, lines = run_of(seed)
    peak, warmup, schedule, decay, floor = find(lines, OPTIMIZER).groups()
    peak, warmup, floor = float(peak), number(warmup), float(floor)
    total = number(find(lines, EPOCHS).group(3))
    spikes = [number(m.group(1)) for m in (SPIKE.search(t) for t in texts(lines)) if m]
    # Skipped updates (NaN, fp16 overflow) do not advance the scheduler.
    skipped = []
    last_step = None
    for text in texts(lines):
        match = re.search(r"Epoch (\d+)/\d+ .*Step (\d+)/", text)
        if match:
            last_step = (int(match.group(1)) - 1) * sc.steps_per_epoch + int(match.group(2))
        if "NaN loss on rank" in text or text.startswith("Gradient overflow."):
            skipped.append(last_step)
    last_lr = last_counted = None
    for _, match in progress(lines):
        if match.group("micro"):
            continue
        step = (int(match.group("epoch")) - 1) * sc.steps_per_epoch + int(match.group("step"))
        counted = step - len([s for s in skipped if s <= step])
        if counted <= warmup:
            expected = peak * counted / warmup
        elif decay:
            shape = 1 - min(1.0, max(0.0, (counted - (total - number(decay))) / number(decay)))
            expected = floor + (peak - floor) * shape
        else:
            fraction = min(1.0, (counted - warmup) / (total - warmup))
            shape = 0.5 * (1 + math.cos(math.pi * fraction)) if schedule == "cosine decay" \
                else 1 - fraction
            expected = floor + (peak - floor) * shape
        expected *= 0.5 ** len([s for s in spikes if s < step])
        shown = float(match.group("lr"))
        assert shown == pytest.approx(expected, rel=6e-4, abs=1e-12)
        if last_lr is not None and last_counted > warmup:
            assert shown <= last_lr * (1 + 1e-3)
        last_lr, last_counted = shown, counted


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_starts_where_that_kind_of_run_starts_and_falls(seed):
    sc, state, lines = run_of(seed)
    losses = [float(m.group("loss")) for _, m in progress(lines) if not m.group("micro")]
    assert len(losses) >= 4
    first = losses[0]
    if sc.loss_curve == "sft" and sc.first_step == 1:
        assert 1.3 <= first <= 2.7
    elif sc.loss_curve == "fresh":
        assert math.log(sc.model.vocab) - 2.0 <= first <= math.log(sc.model.vocab) + 0.6
    else:
        assert 1.0 <= first <= 3.5
    # Every run shows its loss falling clearly from its first tenth to its last: a resumed
    # job's final LR decay too.
    head = losses[:max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    fall = 0.1 if sc.first_step == 1 else 0.08
    assert sum(tail) / len(tail) < sum(head) / len(head) - fall


@pytest.mark.parametrize("seed", SEEDS)
def test_throughput_batch_and_step_time_add_up(seed):
    sc, state, lines = run_of(seed)
    global_batch, per_gpu = (number(g) for g in find(lines, BATCH).groups())
    accum, tokens_per_step = (number(g) for g in find(lines, ACCUM).groups())
    seq_len = number(re.search(r"Sequence length: (\d+)", "\n".join(texts(lines))).group(1))
    assert global_batch == per_gpu * accum * sc.dp
    assert tokens_per_step == global_batch * seq_len
    rows = [(clock, m) for clock, m in progress(lines) if not m.group("micro")]
    # The first step of a (re)started job is slow (compile, NCCL warm-up), then steady.
    first_logged = sc.segments[0].updates[0][0]
    first = rows[0][1]
    if (int(first.group("epoch")) - 1) * sc.steps_per_epoch + int(first.group("step")) == \
            first_logged:
        assert number(first.group("tps")) < 0.97 * sc.cluster_tokens_per_s
        rows = rows[1:]
    slow = set(e.step for e in sc.events if e.kind == "slow")
    ratios = []
    for clock, match in rows:
        tps = number(match.group("tps"))
        sps = number(match.group("sps"))
        # A sample is one packed sequence: tok/s over samples/s is the sequence length.
        assert tps / sps == pytest.approx(seq_len, rel=0.003 + 0.006 / sps)
        # Never faster than the plan by more than drift; slower after a pause or a stall.
        assert tps <= sc.cluster_tokens_per_s * 1.02
        ratios.append(tps / sc.cluster_tokens_per_s)
    # Real runs drift a little and dip after evaluations and saves; most steps are close.
    assert sum(1 for r in ratios if r >= 0.97) >= 0.8 * len(ratios)
    if len(sc.segments) > 1 and len(ratios) >= 20:
        assert max(ratios) - min(ratios) >= 0.01
    # Consecutive updates are exactly as far apart as their tokens take at the shown rate.
    for (c0, m0), (c1, m1) in zip(rows, rows[1:]):
        if m0.group("epoch") != m1.group("epoch"):
            continue
        steps = int(m1.group("step")) - int(m0.group("step"))
        if steps <= 0 or c1 - c0 > steps * sc.step_seconds * 1.3 + sum(
                e.extra_s for e in sc.events if e.kind == "slow"):
            continue  # a validation or checkpoint lies between them
        expected = steps * tokens_per_step / number(m1.group("tps"))
        assert c1 - c0 == pytest.approx(expected, rel=0.002)
    # Model FLOP utilisation stays in the plausible band for the GPU.
    mfu = sc.flops_per_token * sc.cluster_tokens_per_s / sc.gpus / sc.gpu.peak_flops
    assert 0.1 <= mfu <= (0.55 if sc.gpu.key.startswith("a100") else 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_model_fits_and_memory_is_steady(seed):
    sc, state, lines = run_of(seed)
    rows = progress(lines)
    used = [float(m.group("used")) for _, m in rows]
    total = float(rows[0][1].group("total"))
    assert total == pytest.approx(sc.gpu.capacity_gib, abs=0.05)
    assert max(used) < total
    # Steady after the first optimizer step, identical on every data-parallel rank, and
    # what the plan sized: weights, gradients, optimizer states and activations.
    assert len(set(used[2:])) == 1
    assert used[-1] == round(sc.memory_gib, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_eta_counts_down_with_the_clock(seed):
    sc, state, lines = run_of(seed)
    rows = progress(lines)
    ends = [clock + parse_hms(m.group("eta")) for clock, m in rows]
    assert max(ends) - min(ends) <= 1.5
    # ...and reaches zero with the last step, as a progress bar's does.
    assert rows[-1][1].group("eta") == "00:00"
    assert float(rows[-1][1].group("pct")) == 100.0


@pytest.mark.parametrize("seed", SEEDS)
def test_validation_and_summary_agree_with_what_was_shown(seed):
    sc, state, lines = run_of(seed)
    all_text = texts(lines)
    vals = [VAL.search(t) for t in all_text if VAL.search(t)]
    assert len(vals) == len(sc.segments)
    # One validation set for the whole run.
    sizes = set(re.findall(r"Running validation: ([\d,]+) samples", "\n".join(all_text)))
    assert len(sizes) == 1
    for match in vals:
        assert float(match.group(2)) == pytest.approx(math.exp(float(match.group(1))),
                                                      abs=0.006)
    losses = [m.group("loss") for _, m in progress(lines)]
    summary = "\n".join(t for _, item in lines if item.kind == "box" for t in [item.text])
    final = re.search(r"Final loss: ([\d.]+)", summary).group(1)
    assert final == losses[-1]
    ppl = float(re.search(r"Final PPL: ([\d.]+)", summary).group(1))
    assert ppl == pytest.approx(math.exp(float(final)), abs=0.006)
    saved = [t for t in all_text if CKPT_SAVED.search(t)]
    assert re.search(r"Checkpoints: (\d+) saved", summary).group(1) == str(len(saved))
    total = re.search(r"Total time: (\S+(?: \S+)?)", summary).group(1)
    session = re.search(r"this session ([\d:]+)", summary)
    assert parse_hms(session.group(1) if session else total) == int(state.clock)
    if session:
        assert parse_hms(total) == int(sc.resumed_seconds + state.clock)
    tokens = number(re.search(r"Tokens trained: ([\d,]+)", summary).group(1))
    assert tokens == sc.session_steps * sc.tokens_per_step
    # Every row is `Label: value`, one space after the colon, like `Checkpoints: n saved`.
    rows = [item.text for _, item in lines if item.kind == "box"][1:-1]
    labels = [re.match(r"^\W  ([A-Z][\w ]*?): (\S.*?) *\W$", row) for row in rows]
    assert all(labels), rows
    assert [m.group(1) for m in labels][:3] == ["Model", "Cluster", "Total time"]


@pytest.mark.parametrize("seed", SEEDS)
def test_cluster_model_and_data_lines_use_real_facts(seed):
    sc, state, lines = run_of(seed)
    gpus, name, nodes = find(lines, FOUND).groups()
    assert name in PRODUCT_NAMES
    assert int(gpus) == sc.gpus and int(nodes) * sc.per_node == sc.gpus
    size = number(re.search(r"Model size: ([\d,]+) parameters", "\n".join(texts(lines)))
                  .group(1))
    listed = {m.name: m.params for m in lt.MODELS}
    if sc.model.name in listed:
        assert size == listed[sc.model.name]
    assert find(lines, re.compile(r"Loading model: (.+)$")).group(1) == sc.model.name
    assert re.search(r"Dataset: \S+ \([\d,.]+[TB]? (examples|tokens)\)", "\n".join(
        texts(lines)))


SAVED = re.compile(r"Checkpoint saved in ([\d.]+)s \((?:async: )?([\d.]+ (?:GB|MB)) (?:at "
                   r"([\d.]+) GB/s from (\d+) nodes?|staged to host memory on (\d+) nodes?)")
EXPORTED = re.compile(r"Exported to \S+/ \(([\d.]+) (GB|MB) in ([\d.]+)s, ([\d.]+) (GB|MB)/s\)$")


def gigabytes(text):
    value, unit = text.split()
    return float(value) / (1 if unit == "GB" else 1000.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_checkpoints_and_export_follow_bytes_per_parameter(seed):
    """Checkpoint sizes follow bytes per parameter; save times follow the bytes over an
    honest write rate (2-5 GB/s a node to a parallel file system, 1.2-2.2 GB/s for one
    process writing the final model), or go async, staged to host memory, when large."""
    sc, state, lines = run_of(seed)
    all_text = "\n".join(texts(lines))
    model_gb = gigabytes(re.search(r"Model state: ([\d.]+ (?:GB|MB))", all_text).group(1))
    per_param = 4 if sc.method in ("lora", "qlora") else 2
    assert model_gb == pytest.approx(per_param * lt.trainable_params(sc) / 1e9, abs=0.006)
    shard_marks = re.findall(r"Writing shards (\d+)/(\d+)", all_text)
    assert shard_marks and all(done == total for done, total in shard_marks[3::4])
    saves = [SAVED.search(t) for t in texts(lines) if SAVED.search(t)]
    assert len(saves) == sum(1 for seg in sc.segments if seg.saves)
    assert len(set(bool(m.group(5)) for m in saves)) == 1  # one kind of save for the job
    for match in saves:
        seconds, total = float(match.group(1)), gigabytes(match.group(2))
        if match.group(5) is None:
            per_node = total / (seconds - 0.15) / int(match.group(4))
            assert 1.9 <= per_node <= 5.1 or total < 0.5
        else:
            assert seconds < 8.0  # staging runs at PCIe speed
    for match in saves:
        if gigabytes(match.group(2)) < 1.0:
            assert float(match.group(1)) < 0.7  # small adapters save in well under a second
    exported = [EXPORTED.search(t) for t in texts(lines) if EXPORTED.search(t)]
    if sc.kind == "pretrain":
        assert not exported  # a resumed pretraining job ends on its checkpoint
        return
    size, unit, seconds, rate, rate_unit = exported[0].groups()
    shown_rate = float(rate) / (1 if rate_unit == "GB" else 1000.0)
    # One process at 1.2-2.2 GB/s, and a tenth of a second for the small files around it.
    assert shown_rate <= 2.3
    if gigabytes(size + " " + unit) >= 1.0:
        assert shown_rate >= 1.0
    names = re.findall(r"Writing (\S+\.safetensors) \[(\d+)/(\d+)\]", all_text)
    count = int(names[-1][2])
    if sc.method in ("full", "pretrain"):
        assert count == math.ceil(2 * sc.model.params / 5e9)
        if count > 1:
            assert names[-1][0] == "model-%05d-of-%05d.safetensors" % (count, count)
    else:
        assert names[-1][0] == "adapter_model.safetensors"


@pytest.mark.parametrize("model", ["Llama-3.1-405B", "Llama-3.1-70B", "Mixtral-8x7B",
                                   "gpt-2-xl", "acme-13B"])
def test_exports_are_written_from_rank_0_or_left_to_the_checkpoint(model):
    for seed in range(6):
        sc, state, lines = record(seed, model_name=model)
        exported = [EXPORTED.search(t) for t in texts(lines) if EXPORTED.search(t)]
        seconds = lt.export_seconds(sc, sc.rank0_write_gbs)
        assert bool(exported) == bool(seconds)
        if exported:
            assert float(exported[0].group(3)) <= lt.MAX_EXPORT_SECONDS


def rare(sc):
    """Events beside the plan (fp16's overflows at the very start are routine)."""
    return [e for e in sc.events if not (e.kind == "overflow" and e.step <= 3)]


@pytest.mark.parametrize("seed", SEEDS)
def test_rare_events_are_rare_and_the_run_goes_on(seed):
    sc, state, lines = run_of(seed)
    kinds = [item.kind for _, item in lines]
    alarming = [k for k in kinds if k in ("warn", "error")]
    assert len(alarming) < 0.05 * len(kinds)
    last_event = max([i for i, k in enumerate(kinds) if k in ("warn", "error")] or [0])
    assert "progress" in kinds[last_event:] or last_event == 0
    # None in the last 15% of the run: a spike has ~20 steps to settle before the end.
    for event in rare(sc):
        assert event.step <= sc.last_step - max(20, 0.15 * sc.session_steps)


def test_events_are_rare_and_of_the_kinds_software_knows():
    """At most one run in four has an event, one in twenty two; a spike, a slow step, and
    with fp16 a NaN or overflowing batch; no out-of-memory retries, no network stalls
    narrated by a library that never prints them."""
    counts = []
    seen = set()
    for seed in range(400):
        sc = lt.build_scenario(seed)
        counts.append(len(rare(sc)))
        seen.update(event.kind for event in sc.events)
        if sc.precision == "bf16":
            assert not any(e.kind in ("nan", "overflow") for e in sc.events)
    assert sum(1 for n in counts if n >= 1) <= 0.25 * len(counts)
    assert sum(1 for n in counts if n >= 2) <= 0.05 * len(counts)
    assert seen <= {"spike", "slow", "nan", "overflow"}
    assert {"spike", "slow", "overflow"} <= seen
    seen.clear()
    for seed in range(300):
        seen.update(event.kind for event in lt.build_scenario(seed, gpu_key="a100").events)
    assert "nan" in seen


def test_a_spike_settles_within_twenty_steps_and_validation_sees_it():
    checked = 0
    for seed in range(300):
        sc = lt.build_scenario(seed)
        spikes = [e for e in sc.events if e.kind == "spike"]
        if not spikes:
            continue
        spike = spikes[0]
        assert lt.spike_boost(sc, spike.step + 20) < 0.05 * spike.size
        assert lt.spike_boost(sc, spike.step + 1) > 0.8 * spike.size
        # A validation just after the spike sees it; one long after does not.
        rng = __import__("random").Random(0)
        near = lt.val_loss_at(sc, spike.step + 1, rng) - lt.expected_loss(sc, spike.step + 1)
        assert near > 0.5 * spike.size
        checked += 1
    assert checked >= 10


def test_a_slow_step_shows_as_a_slow_step_and_nothing_else():
    checked = 0
    for seed in range(200):
        sc = lt.build_scenario(seed)
        slow = [e for e in sc.events if e.kind == "slow"]
        if not slow or sc.micro_updates > 1:
            continue
        sc, state, lines = record(seed)
        assert not any("retransmit" in t or "No ACK" in t or "stall" in t for t in texts(lines))
        step = slow[0].step
        rows = progress(lines)
        steps = [(int(m.group("epoch")) - 1) * sc.steps_per_epoch + int(m.group("step"))
                 for _, m in rows]
        index = next(i for i, s in enumerate(steps) if s >= step)
        tps = number(rows[index][1].group("tps"))
        assert tps < 0.9 * sc.cluster_tokens_per_s
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("options", [
    {"model_name": "Llama-3.1-405B", "gpus": 8, "gpu_key": "a100"},
    {"model_name": "Llama-3.1-8B", "gpus": 1, "gpu_key": "a100-40g"},
    {"model_name": "gpt-2-xl", "gpus": 4096, "gpu_key": "h100"},
    {"model_name": "Mixtral-8x7B", "gpus": 64, "gpu_key": "mi300x"},
    {"model_name": "acme-13B", "gpus": 16, "gpu_key": "b200"},
    {"model_name": "Llama-3.1-70B", "gpus": 512, "gpu_key": "h200"},
])
def test_forced_scenarios_still_fit_and_add_up(options):
    for seed in range(5):
        sc, state, lines = record(seed, **options)
        assert sc.memory_gib < sc.gpu.capacity_gib
        assert 30 <= state.clock <= 300
        if options["model_name"] == "Llama-3.1-405B":
            assert sc.method == "qlora"  # 405B on 8 A100s is a QLoRA run
        if options["gpus"] >= 256:
            assert sc.method == "pretrain" and sc.first_step > 1
        assert sc.gpus == options["gpus"]
        assert progress(lines)
        if sc.gpus == 1:  # one GPU has no process group and no collectives
            assert not any("NCCL" in t or "world size" in t for t in texts(lines))


def test_mixture_of_experts_shows_active_parameters():
    sc, state, lines = record(3, model_name="Mixtral-8x7B", gpus=64, gpu_key="h100")
    assert "Model size: 46,702,792,704 parameters (12,879,925,248 active)" in texts(lines)
    assert sc.flops_per_token < 6 * 20e9


def test_custom_model_size_is_read_from_its_name():
    model = lt.find_model("acme-13B")
    assert abs(model.params - 13e9) / 13e9 < 0.03
    assert lt.find_model("LLAMA-3.1-8b").name == "Llama-3.1-8B"
    with pytest.raises(lt.ScenarioError):
        lt.find_model("no-size-here")


def test_llama_parameter_formula_matches_published_count():
    assert lt.llama_params(128256, 32, 4096, 8, 128, 14336) == 8030261248
    assert lt.llama_params(128256, 80, 8192, 8, 128, 28672) == 70553706496
    assert lt.lora_params(lt.find_model("Llama-3.1-8B"), 16) == 41943040


def test_same_seed_same_run_and_seeds_differ():
    first = texts(record(11)[2])
    assert first == texts(record(11)[2])
    assert first != texts(record(12)[2])


def test_humor_off_never_funny_and_max_always():
    funny_models = set(lt.FUNNY_MODEL_NAMES)
    funny_data = {d.name for d in lt.FUNNY_DATASETS}
    for seed in range(80):
        sc = lt.build_scenario(seed, humor="off")
        assert sc.model.name not in funny_models and sc.dataset.name not in funny_data
        assert not any(root.split("{")[0] in sc.checkpoint_root
                       for root in lt.FUNNY_CHECKPOINT_DIRS)
        sc = lt.build_scenario(seed, humor="max")
        assert sc.model.name in funny_models


def test_pacer_keeps_wall_time_at_the_requested_speed():
    """With a fake clock: each wait ends when run clock / speed has passed, never drifting."""
    now = [100.0]

    def monotonic():
        return now[0]

    def idle(seconds):
        now[0] += seconds

    for speed in (1.0, 4.0, 0.5):
        pacer = lt.Pacer(speed=speed, monotonic=monotonic)
        pacer.start_run()
        start = now[0]
        state = lt.RunState(lt.build_scenario(5))
        for delay in [0.4, 0.0, 1.3, 0.7, 2.25] * 20:
            pacer.advance(state, delay, idle)
            assert now[0] - start == pytest.approx(state.clock / speed, abs=1e-9)


def test_exit_after_stops_on_the_wall_clock():
    now = [0.0]
    pacer = lt.Pacer(speed=1.0, exit_after=90.0, monotonic=lambda: now[0])
    pacer.start_run()
    state = lt.RunState(lt.build_scenario(5))

    def idle(seconds):
        now[0] += seconds

    with pytest.raises(lt.ExitAfter):
        for _ in range(1000):
            pacer.advance(state, 1.0, idle)
    assert now[0] == pytest.approx(90.0, abs=0.3)


def test_pacer_resumes_after_a_stop_instead_of_replaying_it():
    """After Ctrl-Z and fg the wall clock has jumped: lines keep their spacing, no burst."""
    now = [0.0]
    idled = []

    def idle(seconds):
        idled.append(seconds)
        now[0] += seconds

    pacer = lt.Pacer(speed=1.0, monotonic=lambda: now[0])
    pacer.start_run()
    state = lt.RunState(lt.build_scenario(5))
    for _ in range(5):
        pacer.advance(state, 0.5, idle)
    now[0] += 40.0  # the process sat stopped for 40 s
    resumed_at = now[0]
    for _ in range(4):
        pacer.advance(state, 0.5, idle)
    assert now[0] - resumed_at == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_collectives_fit_inside_the_step_time(seed):
    """Sharded and data-parallel training move weights and gradients every step; the step
    cannot be shorter than the network needs (a 400 Gb/s InfiniBand rail per GPU moves at
    most 50 GB/s, 200 Gb/s on A100 systems; ring collectives move (n-1)/n of the data)."""
    sc, state, lines = run_of(seed)
    all_text = "\n".join(texts(lines))
    gpus, _, nodes = find(lines, FOUND).groups()
    gpus, nodes = int(gpus), int(nodes)
    if nodes == 1:
        return  # NVLink inside a node is an order of magnitude faster
    params = number(re.search(r"Model size: ([\d,]+) parameters", all_text).group(1))
    strategy = re.search(r"Strategy: (.+)", all_text).group(1)
    method = re.search(r"Training method: (\S+)", all_text).group(1)
    accum, tokens_per_step = (number(g) for g in find(lines, ACCUM).groups())
    tps = number(progress(lines)[0][1].group("tps"))
    step_seconds = tokens_per_step / tps
    link = 25e9 if "A100" in all_text.split("Found", 1)[1].split("\n", 1)[0] else 50e9
    ring = (gpus - 1.0) / gpus
    if method == "Full":
        if strategy.startswith(("FSDP", "DeepSpeed ZeRO-3")):
            moved = 3 * 2 * params * ring * accum
        else:
            moved = 2 * 2 * params * ring
    elif method in ("LoRA", "QLoRA") and strategy.startswith("FSDP"):
        moved = 2 * (2.0 if method == "LoRA" else 0.5) * params * ring * accum
    else:
        return  # adapters only, or Megatron's distributed optimizer over a long step
    assert moved / link <= step_seconds


def test_a_resumed_pretraining_run_is_the_final_stretch_after_a_save():
    """A resumed job restarts from its last save, runs the LR's final decay to the job's end
    and holds no intermediate evaluation: evaluations come every 500 steps or more."""
    checked = 0
    for seed in range(200):
        sc = lt.build_scenario(seed)
        if not sc.resumed:
            continue
        assert sc.kind == "pretrain" and sc.schedule == "wsd"
        assert (sc.first_step - 1) % sc.save_interval == 0
        assert sc.save_interval % sc.eval_interval == 0 and sc.eval_interval >= 500
        assert not any(step % sc.eval_interval == 0
                       for step in range(sc.first_step, sc.last_step))
        assert sc.segments[-1].last_step == sc.total_steps == sc.last_step
        assert sc.total_steps - sc.decay_steps == sc.first_step - 1
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("options", [{"model_name": "Llama-3.1-405B"}, {"gpus": 4096},
                                     {"model_name": "acme-1000B"}, {"gpus": 256},
                                     {"model_name": "acme-125M"}, {"gpus": 1}])
def test_open_choices_are_drawn_into_a_two_to_four_minute_run(options):
    for seed in range(25):
        sc = lt.build_scenario(seed, **options)
        assert 120 <= lt.run_seconds(sc) <= 240
        assert min(sum(u[2] for u in seg.updates) for seg in sc.segments) >= 27


def test_no_run_is_longer_than_five_minutes_whatever_is_asked():
    for seed in range(10):
        try:
            sc = lt.build_scenario(seed, model_name="acme-1900B", gpus=512, gpu_key="a100-40g")
        except lt.ScenarioError as error:
            assert "too long to show" in str(error) or "fit" in str(error)
            continue
        assert lt.run_seconds(sc) <= 300


def test_data_parallel_strategies_issue_their_own_collectives():
    for seed in range(150):
        sc = lt.build_scenario(seed)
        ops = set(lt.collective_ops(sc))
        if sc.strategy in ("DDP", "single GPU"):
            assert ops == {"AllReduce"}
        elif sc.strategy.startswith(("FSDP", "DeepSpeed ZeRO-3")):
            assert "AllReduce" not in ops
    assert lt.cluster_shape(3) == (1, 3) and lt.cluster_shape(7) == (1, 7)
    assert lt.cluster_shape(12) == (3, 4) and lt.cluster_shape(64) == (8, 8)


def test_a_small_model_on_a_big_cluster_runs_a_pretraining_speedrun_not_a_blink():
    """Fixing model, GPU count and type leaves nothing to redraw: a 125M model on 64 H100s
    finishes any instruction set in seconds, so the honest show is a pretraining job."""
    for seed in range(10):
        sc = lt.build_scenario(seed, model_name="acme-125M", gpus=64, gpu_key="h100")
        assert sc.method == "pretrain" and sc.first_step == 1
        assert 120 <= lt.run_seconds(sc) <= 240
