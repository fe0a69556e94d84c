"""TPP's penalty schedule in optimizer steps, the authors' way (MingSun-Tse/TPP, `pruner/opp_pruner.py`).

Their CIFAR run: lambda grows by 1e-4 every 10 iterations up to 1 (100,000 iterations), then holds at 1 for
10,000 iterations, zeroing one layer's pruned filters every 100 iterations of the hold. A service cannot
spend 280 CIFAR epochs, so every step count is multiplied by `scale`, and the pull is made as strong as the
time is short.

The scaling rule, and why: what empties a pruned filter is the L2 pull, which with SGD (LR eta, momentum mu)
shrinks it by exp(-eta/(1-mu) * sum_t lambda_t), and what keeps a still-useful channel alive is the loss,
which holds it near g/lambda, however long the ramp. A rule that shortens the ramp but keeps lambda's
ceiling at 1 therefore keeps the authors' equilibrium and loses their total pull (0.01 * (50,000 + 10,000)
= 600 over ramp and hold, 12 at scale 0.02): measured that way (the rule until 2026-12-02), ResNet-20 at
PR 0.9 zeroed channels at 0.23 of the kept ones' norm at scale 0.02 and at 0.36 at scale 0.1 (11,000 steps)
and lost 50 and 47 points; at PR 0.5, 1.0-1.6 points. So time is compressed the way a physicist would: the
ceiling is lambda_max / scale (the increment reg_granularity / scale^2, so the ramp still takes
scale * 100,000 steps), which keeps the authors' total pull at any scale and lowers the equilibrium by
1/scale; at scale 1 it is exactly their schedule. The Gram term's lambda is the authors' lambda at the same
point of the ramp (lambda * scale, 0 to lambda_max), so it twists the kept filters along their curve, not 50
times harder. At the default 0.02 (2,000 ramp + 200 hold steps, a zero-out every 2 steps, lambda up to 50),
seed 0 zeroed ResNet-20 at PR 0.9 at a ratio of 0.009 for a cost of -2.4 points, and at PR 0.5 at 0.0015
for -0.2. Not stale BatchNorm statistics either, under the old rule: re-estimated right after the
zero-out (seed 0), the costs were 46.8 and 0.59 points. lambda never passes LAMBDA_CEILING (scales under
1/1000 of the authors' length reach it).

The adaptive mode (our step beyond the paper) grows lambda `growth` (10) times faster up to lambda_max, then
doubles it every `doubling_steps` (100), and stops the ramp at the first update where every pruned channel
is below `norm_ratio` (1e-3) of its layer's kept channels (BatchNorm scale and shift when the layer has one).
Why doubling: the cross-entropy gradient holds a still-useful pruned channel at about g/lambda, so a linear
ramp stalls (ResNet-20 at PR 0.9: still at 0.1 at lambda 2.5, step 500). Doubling got the same model to
0.011 at lambda 256 (step 1000) and ~0.005 at the ceiling (step 1300): at high ratios the cap, not the
goal, can end the ramp, and the report then shows the zero-out cost with a warning above 1 point.
Once the ramp ends, the adaptive mode holds lambda for as many steps as the authors' zero-out pass would take
and then zeroes every group at once, with the accuracy taken right before and right after: its zero-out cost
is the zeroing alone. Zeroed in the authors' pass instead (a group every 2 steps, training at lambda 1000 in
between), ResNet-20 at PR 0.9 measured costs of -3.0, 0.0 and +1.5 points over 3 seeds at the same norm
ratio (~0.004): the step-to-step noise of a network trained at that lambda, not the zeroing. Zeroed at
once, the same seeds cost -0.1, -1.9 and -1.2 points (the pruned residue at lambda 1000 is noise too).
The authors' pass has at most MAX_ZERO_OUT_EVENTS events: past that, an event zeroes several consecutive
groups, so a deep network's pass stays brief (the paper's ResNet-56 has 27 groups and keeps one per event).
The adaptive ramp's cap is the scaled ramp (2,000 steps); lambda never passes LAMBDA_CEILING. The Gram
term's lambda never exceeds lambda_max, so a strong pull does not twist the kept filters harder than the
authors' ceiling does.
Torch-free, so the shape is unit-tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.compression.config import TppOptions

__all__ = ["LAMBDA_CEILING", "MAX_ZERO_OUT_EVENTS", "TppSchedule", "make_tpp_schedule"]

# SGD with momentum mu on the L2 pull (lambda/2)||w||^2 is stable while lr*lambda < 2(1 + mu) = 3.8; at the
# regularization LR 1e-3 this keeps lr*lambda at 1.
LAMBDA_CEILING = 1000.0
MAX_ZERO_OUT_EVENTS = 50


@dataclass(frozen=True)
class TppSchedule:
    """The resolved schedule of one TPP job, all in optimizer steps of the regularization phase."""

    adaptive: bool
    increment: float  # lambda added every `update_interval` steps (scaled)
    update_interval: int
    lambda_max: float  # authors: the ramp's ceiling (lambda_max / scale); adaptive: where doubling starts
    ramp_steps: int  # steps of the scaled staircase to lambda_max (adaptive: its default cap)
    hold_steps: int  # authors: the stabilization phase; adaptive: as long as the authors' zero-out pass
    zero_out_interval: int  # authors: steps between two zero-out events
    max_steps: int  # the phase's length (authors) or its cap (adaptive)
    groups: int
    doubling_steps: int = 100  # adaptive: lambda doubles this often once past lambda_max
    groups_per_zero_out: int = 1  # consecutive groups zeroed at one event (> 1 past MAX_ZERO_OUT_EVENTS)
    gram_share: float = 1.0  # the Gram term's lambda per unit of the pull's (authors: scale)

    def lam(self, step: int, ramp_end: int | None = None) -> float:
        """Returns lambda for 0-based step `step`: increment * floor(step / update_interval) up to lambda_max,
        held there (authors) or doubled every `doubling_steps` beyond it up to LAMBDA_CEILING (adaptive),
        frozen at `ramp_end` (adaptive: where the norms fell low enough)."""
        updates = (step if ramp_end is None else min(step, ramp_end)) // self.update_interval
        grown = self.increment * updates
        if grown <= self.lambda_max or not self.adaptive:
            return min(grown, self.lambda_max)
        beyond = updates * self.update_interval - self.lambda_max / self.increment * self.update_interval
        return min(self.lambda_max * math.pow(2.0, beyond / self.doubling_steps), LAMBDA_CEILING)

    def gram_lambda(self, lam: float) -> float:
        """Returns the lambda that weights the Gram term: the authors' lambda at this point of the ramp
        (authors: lam * scale), never above lambda_max, so an adaptive ramp that grows past it pulls pruned
        filters harder without twisting the kept ones more."""
        return min(lam * self.gram_share, self.lambda_max)

    def zero_at(self, ramp_end: int) -> list[int]:
        """Returns, per group, the step count after which it is zeroed (and re-zeroed after every later step):
        authors: one event every zero_out_interval steps after the ramp (layer i at (i+1)*interval), each
        zeroing groups_per_zero_out consecutive groups; adaptive: every group at the end of the hold."""
        if self.adaptive:
            return [ramp_end + self.hold_steps] * self.groups
        per_event, interval = self.groups_per_zero_out, self.zero_out_interval
        return [ramp_end + (i // per_event + 1) * interval for i in range(self.groups)]

    def zeroed_by(self, ramp_end: int) -> int:
        """Returns the steps after which every group has been zeroed."""
        return max(self.zero_at(ramp_end))

    def regularized_until(self, ramp_end: int) -> int:
        """Returns the step count at which the accuracy "after regularization" is taken, before any group is
        zeroed: the ramp's end (authors: the zero-out pass starts there) or the hold's (adaptive)."""
        return self.zeroed_by(ramp_end) if self.adaptive else ramp_end

    def end(self, ramp_end: int) -> int:
        """Returns the phase's length in steps once the ramp ended at `ramp_end`."""
        return min(ramp_end + self.hold_steps, self.max_steps) if self.adaptive else self.max_steps


def make_tpp_schedule(options: TppOptions, groups: int) -> TppSchedule:
    """Scales the authors' step counts by options.scale (authors: and their pull's ceiling by 1/scale); the
    zero-out interval shrinks so that every event falls within the hold (the authors refuse otherwise)."""
    scale = options.scale
    adaptive = options.schedule == "adaptive"
    # lambda added per update and its ceiling; authors: time compressed by `scale`, their total pull kept
    step_up = options.reg_granularity / scale if adaptive else options.reg_granularity / scale**2
    ceiling = options.lambda_max if adaptive else min(options.lambda_max / scale, LAMBDA_CEILING)
    ramp = options.update_interval * math.ceil(ceiling / step_up - 1e-9)
    increment = step_up * options.growth if adaptive else step_up
    hold = round(options.stabilize_steps * scale)
    count = max(groups, 1)
    per_event = math.ceil(count / MAX_ZERO_OUT_EVENTS)
    events = math.ceil(count / per_event)
    interval = max(1, round(options.zero_out_interval * scale))
    if options.schedule == "adaptive":
        hold = events * interval  # as long as the authors' zero-out pass
    elif events * interval > hold:
        interval = max(1, hold // events)
        hold = max(hold, events * interval)
    if adaptive:
        cap = options.max_reg_steps if options.max_reg_steps is not None else ramp
        max_steps = cap + hold if cap > 0 else 0  # a cap of 0: zero out at once, no regularization
    else:
        max_steps = ramp + hold
    return TppSchedule(adaptive=adaptive, increment=increment, update_interval=options.update_interval,
                       lambda_max=ceiling, ramp_steps=ramp, hold_steps=hold,
                       zero_out_interval=interval, max_steps=max_steps, groups=count,
                       doubling_steps=options.doubling_steps, groups_per_zero_out=per_event,
                       gram_share=1.0 if adaptive else scale)
