"""The story a run tells, as an ML engineer reads it over a shoulder: what kind of job it is
and how often, the allocation a session keeps, how each framework's log ends, and the small
tells (host names, subset sizes, gradient buckets, one line per optimizer step).

The kinds of jobs are what really runs end to end in minutes: fine-tunes on instruction
sets, and small-model pretraining speedruns (Karpathy's llm.c GPT-2 124M recipe, 524,288
tokens a step); the final stretch of a long pretraining job is rarer.
"""

import os
import re

import pytest

import llmtrain as lt
from conftest import SCRIPT, played, run_cli

STYLES = ["classic", "hf", "lightning", "deepspeed", "megatron", "torchtitan"]
GPU_KEYS = [None, "a100", "a100-40g", "h100", "h200", "b200", "mi300x"]


def test_the_default_mix_favours_jobs_that_run_end_to_end_in_minutes():
    kinds = {"sft": 0, "speedrun": 0, "pretrain": 0}
    models = {}
    seeds = range(700)
    for seed in seeds:
        sc = lt.build_scenario(seed)
        kinds[sc.kind] += 1
        models[sc.model.name] = models.get(sc.model.name, 0) + 1
        assert (sc.kind == "pretrain") == sc.resumed
        assert lt.plausible(sc), seed
    assert kinds["pretrain"] <= len(seeds) / 7.0
    assert kinds["speedrun"] >= 0.15 * len(seeds)
    assert kinds["sft"] >= 0.5 * len(seeds)
    # GPT-2-XL (2019) is a speedrun model now and then, not a fixture of modern clusters.
    assert models.get("GPT-2-XL", 0) <= 0.04 * len(seeds)


@pytest.mark.parametrize("style", STYLES)
def test_every_style_and_gpu_gets_a_job_that_fits_the_show(style):
    for seed in range(24):
        sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)], style=style)
        assert lt.plausible(sc), (seed, style)


@pytest.mark.parametrize("style", STYLES)
def test_a_session_keeps_its_allocation(style):
    """A session is one allocation: GPUs, host names and network stay for every job."""
    for seed in (3, 17, 40):
        first = lt.build_scenario(seed, style=style)
        request = lt.Request(None, None, None, "some", style, None)
        session = list(lt.scenarios(first, request, 4))
        assert len(session) >= 3
        for sc in session[1:]:
            assert (sc.gpu.key, sc.gpus, sc.hosts, sc.identity.subnet) == \
                (first.gpu.key, first.gpus, first.hosts, first.identity.subnet)
            assert sc.seed != first.seed


@pytest.mark.parametrize("style", STYLES)
def test_the_next_job_starts_at_a_shell_prompt_with_its_launch_command(style):
    done = run_cli("--plain", "--instant", "--runs", "2", "--seed", "7", "--style", style)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    first = lt.build_scenario(7, style=style)
    second = next(sc for sc in lt.scenarios(
        first, lt.Request(None, None, None, "some", style, None), 2) if sc is not first)
    prompts = [i for i, text in enumerate(out) if text.startswith(lt.shell_prompt(first))]
    assert len(prompts) == 1
    at = prompts[0]
    assert out[at] == lt.shell_prompt(second) + lt.launch_command(style, second)
    assert out[at - 1] == ""  # the first job's log ended; the prompt comes after it
    # The job's own arguments: its model and what it is told to train on.
    command = out[at][len(lt.shell_prompt(second)):]
    program = [word for word in command.split() if "=" not in word][0]
    assert program in ("torchrun", "srun", "deepspeed", "accelerate", "./run_train.sh")
    if style == "torchtitan":  # a TOML config: torchtitan's own for Llama 3, else the team's
        config = re.search(r'CONFIG_FILE="([^"]+)"', command).group(1)
        assert config in (lt.TORCHTITAN_CONFIGS.get(second.model.name),
                          "./train_configs/%s.toml" % re.sub(
                              r"[^a-z0-9]+", "_", second.model.name.lower()))
    else:
        assert lt.hf_repo(second.model) in command or second.model.name.lower() in command.lower()
    # Nothing in the first run's log names a host the session does not have.
    hosts = set(re.findall(r"\b(?:node|gpu|hgx|dgx|compute|mi300x-)\d{2,4}\b",
                           "\n".join(out[:at])))
    assert hosts and hosts <= set(first.hosts)


def test_one_run_looks_as_it_always_did_no_prompt():
    done = run_cli("--plain", "--instant", "--runs", "1", "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert "$ torchrun" not in done.stdout and "llm-training$" not in done.stdout


BOX = re.compile(r"[┌└│╭╰]|^\+-{10}")

ENDINGS = {
    "hf": re.compile(r"^  train_steps_per_second += +\d+\.\d+$"),
    "lightning": re.compile(r"^`Trainer\.fit` stopped: `max_(epochs|steps)=\d+` reached\.$"),
    "deepspeed": re.compile(r"^\[[\d :,-]+\] \[INFO\] \[launch\.py:351:main\] Process \d+ exits "
                            r"successfully\.$"),
    "megatron": re.compile(r"^\[after training is done\] datetime: [\d :-]+ $"),
    "torchtitan": re.compile(r"^\[titan\] [\d :,-]+ - root - INFO - Training completed$"),
}


@pytest.mark.parametrize("style", STYLES)
def test_each_framework_ends_in_its_own_voice(style):
    """No box and no export by N ranks in framework styles; each ends with its own last
    line, and a pretraining job ends on its final checkpoint."""
    for seed in range(0, 60, 4):
        sc = lt.build_scenario(seed, gpu_key=GPU_KEYS[seed % len(GPU_KEYS)], style=style)
        _, shown = played(lt, sc, style)
        out = [item.text for _, item in shown]
        last = [text for text in out if text.strip()][-1]
        assert not any("ranks in parallel" in text for text in out)
        if style == "classic":
            assert any(BOX.search(text) for text in out[-16:])
            continue
        assert not any(BOX.search(text) for text in out[-16:]), style
        assert ENDINGS[style].match(last), (seed, last)
        if sc.kind == "pretrain" and style != "hf":  # Trainer.save_model writes safetensors
            assert not any(".safetensors" in text for text in out)


def test_amd_nodes_are_never_named_like_nvidia_systems():
    for seed in range(80):
        sc = lt.build_scenario(seed, gpu_key="mi300x")
        assert not any(host.startswith(("dgx", "hgx")) for host in sc.hosts)


def test_subsets_are_the_round_sizes_people_type():
    subsets = 0
    for seed in range(300):
        sc = lt.build_scenario(seed)
        if sc.kind == "sft" and sc.examples != sc.dataset.examples:
            assert sc.examples in lt.ROUND_SUBSETS
            subsets += 1
    assert subsets >= 10


def test_ddp_reports_one_bucket_count_and_sharded_runs_none():
    """DDP's buckets are fixed by the model (25 MB bucket_cap_mb); FSDP and ZeRO-3
    reduce-scatter, they have no DDP buckets."""
    seen = 0
    for seed in range(120):
        sc = lt.build_scenario(seed)
        _, shown = played(lt, sc, "classic")
        counts = set(int(m.group(1)) for m in (re.search(r"\((\d+) buckets,", item.text)
                                                for _, item in shown) if m)
        if sc.strategy != "DDP":
            assert not counts
        elif counts:
            assert counts == {lt.ddp_buckets(sc)}
            seen += 1
    assert seen >= 3


@pytest.mark.parametrize("style", STYLES)
def test_the_piped_log_has_one_metrics_line_per_optimizer_step(style):
    """Where a step is longer than the update cadence, what moves between steps is the
    bar in place on a terminal; a pipe gets no line per micro-batch."""
    checked = 0
    for seed in range(200):
        sc = lt.build_scenario(seed, style=style)
        if sc.micro_updates == 1:
            continue
        done = run_cli("--plain", "--instant", "--runs", "1", "--seed", seed, "--style", style)
        assert done.returncode == 0, done.stderr
        assert "micro-batch" not in done.stdout
        if style == "classic":
            steps = re.findall(r"\] Epoch (\d+)/\d+ .*  Step (\d+)/", done.stdout)
            assert len(steps) == len(set(steps)) == sc.session_steps
        checked += 1
        if checked == 2:
            break
    assert checked == 2


def test_a_logging_block_comes_in_one_instant():
    """Lines one logging call or one burst writes share their timestamp: the HF Trainer's
    `***** Running training *****` block is written at once."""
    for seed in range(10):
        sc = lt.build_scenario(seed, style="hf")
        _, shown = played(lt, sc, "hf")
        texts = [item.text for _, item in shown]
        start = next(i for i, t in enumerate(texts) if t.endswith("***** Running training *****"))
        clocks = [clock for clock, _ in shown[start:start + 8]]
        assert len(set(clocks)) == 1


def test_the_readme_sample_is_what_seed_6_prints():
    """The README's abridged plain log is the program's own output (times aside), and its
    launch command is the second job's."""
    with open(os.path.join(os.path.dirname(SCRIPT), "README.md"), encoding="utf-8") as source:
        readme = source.read()
    section = readme[readme.index("## What it prints"):readme.index("## Framework styles")]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    sample = [text for text in blocks[0].splitlines() if text != "..."]
    done = run_cli("--plain", "--instant", "--runs", "2", "--seed", "6")
    assert done.returncode == 0, done.stderr
    untimed = [re.sub(r"^\[[\d :-]+\] ", "", text) for text in done.stdout.splitlines()]
    at = 0
    for text in sample:  # in order, each one a line the program printed
        at = untimed.index(re.sub(r"^\[[\d :-]+\] ", "", text), at) + 1
    assert blocks[1].strip() in done.stdout.splitlines()


def test_a_resumed_pretraining_window_shows_its_cooldown():
    """The weakest fall of the mix: the last stretch of a pretraining job, whose loss falls
    only with its final LR decay. It still falls clearly from its first tenth to its last."""
    checked = 0
    for seed in range(60, 460):
        sc = lt.build_scenario(seed)
        if sc.kind != "pretrain":
            continue
        _, shown = played(lt, sc)
        losses = [float(found.group(1)) for found in (
            re.search(r"Step \d+/\d+ \| Loss: ([\d.]+)", item.text) for _, item in shown)
            if found]
        tenth = max(1, len(losses) // 10)
        assert sum(losses[:tenth]) / tenth - sum(losses[-tenth:]) / tenth >= 0.08, seed
        checked += 1
    assert checked >= 30


#: What each GPU generation runs on: Blackwell needs driver 570+, CUDA 12.8+, PyTorch 2.7+
#: (cu128 wheels) and NCCL 2.26+; Hopper and Ampere clusters keep the CUDA 12.4 stack.
#: Each release also shows in where its loggers sit: torchrun's OMP_NUM_THREADS warning
#: (torch 2.7 / 2.5), the Trainer's summary (transformers 4.53.2 / 4.46.3) and
#: DeepSpeedConfig.print (DeepSpeed 0.17.5 / 0.16.5).
BLACKWELL_STACK = ("2.7.1+cu128", "NCCL 2.26.2", "570.133.20", "CUDA Version: 12.8",
                   "version=0.17.5", "run.py:766]", "[INFO|trainer.py:2402]",
                   "[config.py:958:print]")
HOPPER_STACK = ("2.5.1+cu124", "2.21.5", "550.90.07", "CUDA Version: 12.4", "version=0.16.5",
                "run.py:793]", "[INFO|trainer.py:2314]", "[config.py:1004:print]")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("gpu, own, other", [("b200", BLACKWELL_STACK, HOPPER_STACK),
                                             ("h100", HOPPER_STACK, BLACKWELL_STACK)])
def test_each_gpu_generation_runs_its_own_software_stack(style, gpu, own, other):
    shown = set()
    for seed in (1, 2, 3):
        out = run_cli("--plain", "--instant", "--runs", "1", "--color", "never", "--seed", seed,
                      "--gpu", gpu, "--style", style).stdout
        assert not [version for version in other if version in out], (seed, style)
        shown.update(version for version in own if version in out)
    assert shown, "no version of the stack shown in %s on %s" % (style, gpu)


@pytest.mark.parametrize("model, tokens", [("GPT-NeoX-20B", 50277), ("Qwen2.5-7B", 151665),
                                           ("Llama-3.1-8B", 128256)])
def test_a_tokenizer_is_its_vocabulary_not_the_padded_embedding(model, tokens):
    """GPT-NeoX's and Qwen2's tokenizer.json hold fewer tokens than their embeddings."""
    classic = run_cli("--plain", "--instant", "--runs", "1", "--seed", "3", "--model", model,
                      "--gpus", "64", "--color", "never").stdout
    assert "vocab size {:,}".format(tokens) in classic
    megatron = run_cli("--plain", "--instant", "--runs", "1", "--seed", "3", "--model", model,
                       "--gpus", "64", "--style", "megatron", "--color", "never").stdout
    padded = re.search(r"padded vocab \(size: (\d+)\) with (\d+) dummy tokens \(new size: "
                       r"(\d+)\)", megatron)
    assert padded and int(padded.group(1)) == tokens
    assert int(padded.group(1)) + int(padded.group(2)) == int(padded.group(3))


@pytest.mark.parametrize("seed", [20, 26, 37, 1, 6])
def test_megatrons_arguments_are_sorted_and_are_the_jobs_own(seed):
    out = run_cli("--plain", "--instant", "--runs", "1", "--seed", seed, "--style", "megatron",
                  "--color", "never").stdout
    block = out.split("-- arguments --")[1].split("-- end of arguments --")[0]
    args = dict(re.findall(r"^  (\w+) \.+ (\S+)$", block, re.MULTILINE))
    assert list(args) == sorted(args, key=str.lower)
    sc = lt.build_scenario(seed, *lt.Request(None, None, None, "some", "megatron", None))
    assert int(args["eval_interval"]) == sc.eval_interval
    assert int(args["save_interval"]) == sc.save_interval
    assert int(args["train_iters"]) == sc.total_steps
    assert "iteration %8d/%8d |" % (sc.total_steps, sc.total_steps) in out
    if sc.kind == "pretrain":
        assert int(args["eval_interval"]) >= 500  # a long job evaluates every 500+ steps
    if sc.schedule == "wsd":
        assert args["lr_decay_style"] == "WSD"
        assert int(args["lr_wsd_decay_iters"]) == sc.decay_steps


@pytest.mark.parametrize("gpus", [1, 4, 16])
def test_lightning_logs_distributed_init_once_per_process_of_the_node(gpus):
    out = run_cli("--plain", "--instant", "--runs", "1", "--seed", "3", "--gpus", gpus,
                  "--style", "lightning", "--color", "never").stdout
    ranks = re.findall(r"^Initializing distributed: GLOBAL_RANK: (\d+), MEMBER: (\d+)/(\d+)$",
                       out, re.MULTILINE)
    assert [int(rank) for rank, _, _ in ranks] == list(range(min(gpus, 8)))
    assert all(int(member) == int(rank) + 1 and int(world) == gpus
               for rank, member, world in ranks)


@pytest.mark.parametrize("seed", range(1, 9))
def test_local_ranks_have_pids_and_communicators_of_their_own(seed):
    """Processes started one after another get increasing pids with other processes' pids
    between them, and each allocates its communicator in its own heap."""
    out = run_cli("--plain", "--instant", "--runs", "1", "--seed", seed, "--style", "hf",
                  "--color", "never", "--gpus", "8").stdout
    inits = re.findall(r"^\S+:(\d+):(\d+) \[(\d)\] NCCL INFO ncclCommInitRank comm (0x[0-9a-f]+)"
                       r".* Init COMPLETE$", out, re.MULTILINE)
    pids = [int(pid) for pid, _, _, _ in inits]
    assert len(inits) >= 2 and pids == sorted(set(pids))
    steps = {b - a for a, b in zip(pids, pids[1:])}
    assert len(inits) == 2 or len(steps) > 1  # not an arithmetic progression
    comms = [int(comm, 16) for _, _, _, comm in inits]
    assert len({b - a for a, b in zip(comms, comms[1:])}) == len(comms) - 1
    # Rank 0's other NCCL lines carry the same pid and thread as its init line.
    pid0, tid0 = inits[0][0], inits[0][1]
    assert re.search(r"^\S+:%s:%s \[0\] NCCL INFO Channel" % (pid0, tid0), out, re.MULTILINE)


@pytest.mark.parametrize("style, first, last", [
    ("megatron", "-- arguments --", "-------------------- end of arguments ---------------------"),
    ("deepspeed", "DeepSpeedEngine configuration:", "}")])
def test_a_configuration_dump_is_printed_at_one_instant(style, first, last):
    """Megatron's _print_args and DeepSpeedConfig.print print their whole block in one
    go: every line of it carries the same time."""
    for seed in (1, 20):
        sc = lt.build_scenario(seed, style=style)
        _, shown = played(lt, sc, style)
        texts = [item.text for _, item in shown]
        start = next(i for i, text in enumerate(texts) if first in text)
        end = texts.index(last, start)
        assert end - start >= 10
        assert len({clock for clock, _ in shown[start:end + 1]}) == 1, seed
