"""bench.coupling_study: the command lines of issue 31's accuracy runs and the table it prints
from their summary.json files (no training here: the runs are what a user starts)."""
from bench import coupling_study as study
from tests.test_equal_cost_study import finish


def test_every_run_is_at_one_flops_target_with_one_rate_coupled_or_not(tmp_path):
    planned = study.jobs(str(tmp_path / "data"), str(tmp_path))
    assert [(name, seed) for name, seed, _, _ in planned] == [
        (name, seed) for seed in (1, 2)
        for name in ("fsdp-bn", "fsdp-bn-coupled", "fpgm", "fpgm-coupled")]
    for name, seed, save, cmd in planned:
        flag = lambda f: cmd[cmd.index(f) + 1]  # noqa: E731
        assert (flag("--manualSeed"), flag("--save_path")) == (str(seed), save)
        assert (flag("--target_flops"), flag("--allocation"), flag("--epochs")) == (
            "0.4", "uniform", "10")
        assert flag("--coupling") == ("residual" if name.endswith("-coupled") else "none")
        assert flag("--method") == name.split("-")[0]
        assert ("--attenuate" in cmd) == name.startswith("fsdp-bn")
    # a run's folder differs from every other's: a finished one is never run over
    assert len({save for _, _, save, _ in planned}) == len(planned)


def test_the_table_gives_each_run_its_cost_and_the_paired_coupled_minus_uncoupled(tmp_path):
    planned = study.jobs(str(tmp_path / "data"), str(tmp_path))
    top1 = {("fpgm", 1): 88.8, ("fpgm", 2): 89.4, ("fpgm-coupled", 1): 88.1,
            ("fpgm-coupled", 2): 88.0, ("fsdp-bn", 1): 87.0}
    for name, seed, save, _ in planned:
        if (name, seed) in top1:
            coupled = name.endswith("-coupled")
            finish(tmp_path / save, top1[name, seed], 0.3996 if coupled else 0.3993,
                   0.52 if coupled else 0.48)
    table = study.report(planned)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
            if line.startswith("| ")}
    assert rows["fpgm"] == "| fpgm | 88.80 | 89.40 | 89.10 ± 0.42 | 0.3993 | 0.4800 |"
    assert rows["fpgm-coupled"] == "| fpgm-coupled | 88.10 | 88.00 | 88.05 ± 0.07 | 0.3996 | 0.5200 |"
    assert rows["fsdp-bn"] == "| fsdp-bn | 87.00 | – | 87.00 | 0.3993 | 0.4800 |"
    assert rows["fsdp-bn-coupled"] == "| fsdp-bn-coupled | – | – | – | – | – |"
    assert "paired difference fsdp-bn-coupled − fsdp-bn (points of top-1): \n" in table + "\n"
    assert "paired difference fpgm-coupled − fpgm (points of top-1): seed 1 -0.70, " \
           "seed 2 -1.40" in table
    assert "mean -1.05, std 0.49, range [-1.40, -0.70] over 2 seeds" in table
