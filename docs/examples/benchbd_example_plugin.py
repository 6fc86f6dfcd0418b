"""An example benchbd plugin: a defense that lives outside benchbd's code.

"Head re-initialisation": keep the backdoored model's feature extractor, throw away its
classification layer, and train a new one on the clean holdout. Use it with
`benchbd run --plugin benchbd_example_plugin --defenses reinit_fc ...`, or list the module
in your package's `benchbd.plugins` entry-point group.
"""

from dataclasses import dataclass, field

from torch import nn

from benchbd.config import check
from benchbd.defenses import DEFENSES, Defense, Frozen, Need
from benchbd.train import TrainRecipe


@dataclass
class ReinitFcParams:
    recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(lr=0.01, epochs=20, batch_size=64))
    keep_blocks: int = 6  # residual blocks kept frozen (WRN-16-1 has 6: everything but the classifier)

    def __post_init__(self):
        check(self.keep_blocks >= 0, f"keep_blocks={self.keep_blocks} must be >= 0")


@DEFENSES.register("reinit_fc", aliases=("reinit",))
class ReinitFc(Defense):
    """Retrain the classifier of the backdoored model on the clean holdout (example plugin)."""

    Params = ReinitFcParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})

    def run(self, ctx):
        backdoored = ctx.need(Need.BACKDOORED_MODEL)
        head = ctx.new_model().head(self.params.keep_blocks)
        model = nn.Sequential(Frozen(backdoored.stem(self.params.keep_blocks)), head)
        ctx.trainer.fit(model, ctx.need(Need.HOLDOUT), self.params.recipe, params=head.parameters(), desc="reinit_fc")
        ctx.metrics["trained_parameters"] = sum(p.numel() for p in head.parameters())
        return model
