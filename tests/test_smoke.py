from conftest import run_cli


def test_one_instant_run_prints_the_whole_run():
    result = run_cli("--plain", "--instant", "--runs", "1", "--seed", "1")
    assert result.returncode == 0, result.stderr
    for label in ("Found ", "Loading model: ", "Ready to train!", "Val Loss: ",
                  "Checkpoint saved in ", "Exported to ", "Checkpoints: "):
        assert label in result.stdout
    assert result.stderr == ""
