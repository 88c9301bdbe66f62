"""FSDP and the methods it grew out of, as presets of one mechanism (SPEC §9).

A method says which filters are ranked by what, at which rate per epoch, and what happens to
the selected filters' weights and gradients:

| method | first share           | second share        | rate per epoch        | weights | gradients |
|--------|-----------------------|---------------------|-----------------------|---------|-----------|
| fsdp   | CS, lowest first      | GM among the rest   | asymptotic, τ = 10    | × ζ(e)  | × ζ(e)    |
| fpgm   | L2 norm, smallest     | GM among the rest   | constant from epoch 0 | × 0     | × 0       |
| sfp    | L2 norm, smallest     | —                   | constant from epoch 0 | × 0     | untouched |
| asfp   | L2 norm, smallest     | —                   | asymptotic, τ = 8 (*) | × 0     | untouched |

Checked against the authors' public code: FPGM's training step masks the gradients
(``do_grad_mask``), SFP's does not (its pruned filters regrow during the epoch); both re-rank
among all filters at every update and apply a first mask before epoch 0. (*) ASFP's code is not
public; its paper's rate P(t) = a·e^(−kt) + b with P(0) = 0, P(D·t_max) = ¾·P_goal and
P(t_max) = P_goal is FSDP's θ(e) with τ = 1/D = 8. It reaches its target at the last update
that still has training after it (``schedule.target_epoch``), not at the very last one.

``--attenuate bn`` (every method): the selected channels' BN γ and β get the filters' factor
too, and their gradients the filters' gradient factor (SPEC §4, end).
"""
from dataclasses import dataclass

from .errors import UserError
from .schedule import Schedule, asymptotic_schedule, constant_schedule, target_epoch

RATE_FLAGS = {"cs": "prune_rate_cs", "norm": "prune_rate_norm", "gm": "prune_rate_gm"}


@dataclass(frozen=True)
class Method:
    name: str
    first: str | None         # "cs" or "norm"
    second: str | None        # "gm" or None
    asymptotic: bool          # asymptotic θ(e), or the final rates from epoch 0
    tau: float | None         # the asymptotic schedule's default τ
    fractional: bool          # selected weights × ζ(e) (else × 0)
    scale_grads: bool         # selected gradients × the weights' factor (else untouched)
    default_rates: tuple      # (first, second) when the flags are not given
    early_target: bool = False  # the final count at the last update with training after it

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(c for c in (self.first, self.second) if c)

    @property
    def uses_cs(self) -> bool:
        return "cs" in self.criteria

    def rates(self, args) -> tuple[float, float]:
        """(first share, second share) from the resolved ``--prune_rate_*`` flags."""
        return tuple(getattr(args, RATE_FLAGS[c]) if c else 0.0
                     for c in (self.first, self.second))

    def schedule(self, args) -> Schedule:
        first, second = self.rates(args)
        if not self.asymptotic:
            return constant_schedule(first, second, args.epochs)
        final = (target_epoch(args.epochs, getattr(args, "epoch_prune", 1))
                 if self.early_target else None)
        return asymptotic_schedule(first, second, args.epochs, args.tau,
                                   args.attenuation if self.fractional else 0.0,
                                   args.use_zero_scaling or not self.fractional, final)

    def shares(self, at: dict) -> dict:
        """The per-epoch share of every criterion, for metrics.csv (0 where unused)."""
        out = {f"theta_{c}": 0.0 for c in RATE_FLAGS}
        for c, key in ((self.first, "first"), (self.second, "second")):
            if c:
                out[f"theta_{c}"] = at[key]
        return out


METHODS = {
    "fsdp": Method("fsdp", "cs", "gm", True, 10.0, True, True, (0.1, 0.4)),
    "fpgm": Method("fpgm", "norm", "gm", False, None, False, True, (0.0, 0.5)),
    "sfp": Method("sfp", "norm", None, False, None, False, False, (0.5, 0.0)),
    "asfp": Method("asfp", "norm", None, True, 8.0, False, False, (0.5, 0.0), early_target=True),
}


def resolve_method_args(args) -> Method:
    """Fill the method's defaults into ``args`` and refuse flags it does not use (one line)."""
    method = METHODS[args.method]
    for criterion, flag in RATE_FLAGS.items():
        value = getattr(args, flag)
        if criterion in method.criteria:
            if value is None:
                value = method.default_rates[method.criteria.index(criterion)]
        elif value:
            used = " and ".join(f"--{RATE_FLAGS[c]}" for c in method.criteria)
            raise UserError(f"--method {method.name} does not use --{flag} (it prunes by {used}); "
                            f"drop --{flag} or choose a --method that uses it")
        setattr(args, flag, float(value or 0.0))
    total = sum(getattr(args, RATE_FLAGS[c]) for c in method.criteria)
    if total >= 1:
        used = " + ".join(f"--{RATE_FLAGS[c]} {getattr(args, RATE_FLAGS[c]):g}"
                          for c in method.criteria)
        raise UserError(f"{used} must be < 1 (got {total:g}); lower one of them")
    if args.tau is None:
        args.tau = method.tau
    elif not method.asymptotic:
        raise UserError(f"--method {method.name} prunes at a constant rate from epoch 0, so "
                        "--tau has no effect; drop it (or use --method fsdp/asfp)")
    if args.use_zero_scaling and not method.fractional:
        raise UserError(f"--use_zero_scaling is FSDP's option; --method {method.name} already "
                        "sets the selected weights to zero; drop it")
    if getattr(args, "attenuate", "weights") == "bn" and total == 0:
        raise UserError("--attenuate bn attenuates the selected channels, and with every pruning "
                        "rate 0 none is ever selected; drop --attenuate bn or give a rate")
    return method
