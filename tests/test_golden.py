"""Same seed, same run: the timestamp-free plain log of many seeds in every style, hashed.

The hashes in golden_runs.json were taken from the program as it stood when they were
recorded. A change that only moves code around must leave every one of them as it is; a
change that means to alter what runs print records new ones, in the same commit:

    python3 tests/test_golden.py --update
"""

import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys

from userenv import user_environment

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "llmtrain.py")
GOLDEN = os.path.join(HERE, "golden_runs.json")

STYLES = ("classic", "hf", "lightning", "deepspeed", "megatron", "torchtitan")
#: Twenty drawn runs, then runs that reach what those twenty do not: fp16 fine-tunes (40,
#: 131), resumed pretraining of a mixture of experts (26) and on 1,024 GPUs (37), a GPT-2-XL
#: speedrun (48), one GPU, the largest cluster, a custom small model, and a 405B model that
#: fits 8 A100s only as QLoRA (which Megatron-LM and torchtitan refuse with exit status 2).
CASES = ["--seed %d" % seed for seed in range(1, 21)] + [
    "--seed 40", "--seed 131", "--seed 26", "--seed 37", "--seed 48",
    "--seed 1 --gpus 1",
    "--seed 2 --gpus 4096",
    "--seed 1 --model acme-125M --gpus 8",
    "--seed 1 --model Llama-3.1-405B --gpus 8 --gpu a100",
]

#: Wall-clock times in every format the styles print: ISO dates, clock times with
#: fractions, glog's W<MMDD>, nvidia-smi's `Thu Dec 03 ... 2026`.
TIMES = re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \d{4}|"
                   r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d(?:[.,]\d+)?|^W\d{4}", re.MULTILINE)




def run_hash(case, style, python=sys.executable):
    """sha1 of one run's plain log with its wall-clock times blanked out, its error output
    and its exit status."""
    argv = [python, SCRIPT, "--plain", "--instant", "--color", "never", "--runs", "1",
            "--style", style] + case.split()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=user_environment({"LC_ALL": "C.UTF-8"}), timeout=60)
    assert done.returncode in (0, 2) and b"Traceback" not in done.stderr, (argv, done.stderr)
    text = "%s\n%s\nexit %d" % (TIMES.sub("T", done.stdout.decode("utf-8")),
                                 done.stderr.decode("utf-8"), done.returncode)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def all_hashes(python=sys.executable):
    jobs = [(case, style) for case in CASES for style in STYLES]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        hashes = list(pool.map(lambda job: run_hash(job[0], job[1], python), jobs))
    table = {}
    for (case, style), digest in zip(jobs, hashes):
        table.setdefault(case, {})[style] = digest
    return table


def test_every_recorded_run_prints_exactly_as_recorded():
    with open(GOLDEN) as source:
        recorded = json.load(source)
    assert sorted(recorded) == sorted(CASES), "golden_runs.json is stale: record it again"
    now = all_hashes()
    changed = ["%s --style %s" % (case, style) for case in CASES for style in STYLES
               if now[case][style] != recorded[case][style]]
    assert not changed, "%d of %d runs print differently: %s" % (
        len(changed), len(CASES) * len(STYLES), ", ".join(changed[:12]))


def test_the_time_filter_blanks_times_and_keeps_figures():
    sample = ("[2026-12-03 08:48:59] [TRAIN] Loss: 1.2345 | ETA: 01:55\n"
              "W1203 08:48:59.082000 661490 site-packages/torch/distributed/run.py:793]\n"
              "Thu Dec 03 08:48:59 2026       \n"
              "[INFO|trainer.py:2314] 2026-12-03 08:48:59,719 >> Num examples = 52,002")
    blanked = TIMES.sub("T", sample)
    assert not re.search(r"08:48|2026|1203 |Dec 03", blanked)
    for figure in ("Loss: 1.2345", "ETA: 01:55", "661490", "run.py:793", "52,002"):
        assert figure in blanked


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    with open(GOLDEN, "w") as sink:
        json.dump(all_hashes(), sink, indent=1, sort_keys=True)
        sink.write("\n")
    print("recorded %d runs in %s" % (len(CASES) * len(STYLES), GOLDEN))
